package session

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/pgtoken/pgtoken/authn"
)

// prelude is what every transaction of one client begins with: its role and
// its claim settings, local to the transaction. The two forms every
// transaction needs are built once per session and appended as bytes; the
// rare forms are rendered from the identity when they are needed, so an
// idle session holds little more than its two forms.
type prelude struct {
	id *authn.Identity

	// simple is "SET LOCAL ROLE ...;SET LOCAL ... TO ...;": pure ASCII, so
	// it reads the same in every client encoding and its length in bytes is
	// its length in characters (error positions are shifted by it).
	simple string
	// statements is how many statements simple holds (each answers one
	// CommandComplete that the client must not see).
	statements int

	// stmt is the parameterised statement the extended form binds: SELECT
	// set_config($1,$2,true), ... with one pair per setting. It is prepared
	// once per server connection and shared by every client whose token has
	// as many settings.
	stmt *preludeStmt
	// bind is the Bind message of this client's values into the unnamed
	// portal.
	bind []byte
}

// preludeStmt is the extended form's statement for one number of settings.
type preludeStmt struct {
	name  string
	sql   string
	parse []byte // the Parse message
}

// preludeStmts holds one preludeStmt per number of settings, shared by
// every session of a Server.
type preludeStmts struct{ m sync.Map } // int → *preludeStmt

// get returns the statement for n settings (role included).
func (c *preludeStmts) get(n int) *preludeStmt {
	if v, ok := c.m.Load(n); ok {
		return v.(*preludeStmt)
	}
	var q strings.Builder
	q.WriteString("SELECT ")
	for i := range n {
		if i > 0 {
			q.WriteByte(',')
		}
		fmt.Fprintf(&q, "pg_catalog.set_config($%d,$%d,true)", 2*i+1, 2*i+2)
	}
	st := &preludeStmt{name: "pgtoken_prelude_" + strconv.Itoa(n), sql: q.String()}
	st.parse = appendParse(nil, st.name, st.sql)
	v, _ := c.m.LoadOrStore(n, st)
	return v.(*preludeStmt)
}

// preludePortal names the portal of the prelude when the unnamed one is
// taken.
const preludePortal = "pgtoken_prelude"

// maxSettings bounds how many settings a token may carry (and so the size of
// the prelude); Postgres allows at most 65535 bind parameters.
const maxSettings = 1000

// newPrelude builds a client's prelude from its verified identity; stmts
// supplies the shared extended-protocol statement.
func newPrelude(id *authn.Identity, stmts *preludeStmts) (*prelude, error) {
	if len(id.Settings)+1 > maxSettings {
		return nil, fmt.Errorf("token carries %d claims; at most %d are supported", len(id.Settings), maxSettings-1)
	}
	simple, err := setText(id, "SET LOCAL ")
	if err != nil {
		return nil, err
	}
	n := len(id.Settings) + 1
	p := &prelude{id: id, simple: simple, statements: n, stmt: stmts.get(n)}
	p.bind = p.appendBind(nil, "")
	return p, nil
}

// appendBind appends a Bind of this client's role and settings, in the
// order of stmt's parameters, into portal.
func (p *prelude) appendBind(dst []byte, portal string) []byte {
	id := p.id
	size := 5 + len(portal) + 1 + len(p.stmt.name) + 1 + 2 + 2 + 2 + 8 + len("role") + len(id.Role)
	for _, s := range id.Settings {
		size += 8 + len(s.Name) + len(s.Value)
	}
	if dst == nil {
		dst = make([]byte, 0, size) // held for the session: no slack
	}
	at := len(dst)
	dst = append(dst, 'B', 0, 0, 0, 0)
	dst = append(append(dst, portal...), 0)
	dst = append(append(dst, p.stmt.name...), 0)
	dst = binary.BigEndian.AppendUint16(dst, 0) // all parameters in text
	dst = binary.BigEndian.AppendUint16(dst, uint16(2*(len(id.Settings)+1)))
	param := func(v string) {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(v)))
		dst = append(dst, v...)
	}
	param("role")
	param(id.Role)
	for _, s := range id.Settings {
		param(s.Name)
		param(s.Value)
	}
	dst = binary.BigEndian.AppendUint16(dst, 0) // all results in text
	binary.BigEndian.PutUint32(dst[at+1:], uint32(len(dst)-at-1))
	return dst
}

// appendNamed appends the prelude run in a portal of its own, for when the
// client's unnamed portal must not be replaced: Bind, Execute, Close.
func (p *prelude) appendNamed(dst []byte) []byte {
	dst = p.appendBind(dst, preludePortal)
	dst = appendExecute(dst, preludePortal)
	return appendClosePortal(dst, preludePortal)
}

// sessionSet sets the role and claims for the whole session, for statements
// that cannot run inside a transaction block (VACUUM, CREATE INDEX
// CONCURRENTLY, ...); sessionReset undoes it.
func (p *prelude) sessionSet() string {
	s, _ := setText(p.id, "SET ") // the names were checked when simple was built
	return s
}

func (p *prelude) sessionReset() string {
	var r strings.Builder
	r.WriteString("RESET ROLE;")
	for _, s := range p.id.Settings {
		r.WriteString("RESET ")
		_ = writeSettingName(&r, s.Name)
		r.WriteByte(';')
	}
	return r.String()
}

// setText renders the role and settings of id as SET statements starting
// with verb ("SET LOCAL " or "SET ").
func setText(id *authn.Identity, verb string) (string, error) {
	var b strings.Builder
	b.WriteString(verb)
	b.WriteString("ROLE ")
	writeLiteral(&b, id.Role)
	b.WriteByte(';')
	for _, s := range id.Settings {
		b.WriteString(verb)
		if err := writeSettingName(&b, s.Name); err != nil {
			return "", err
		}
		b.WriteString(" TO ")
		writeLiteral(&b, s.Value)
		b.WriteByte(';')
	}
	return strings.Clone(b.String()), nil // kept for the session: no slack
}

// writeLiteral writes s as an escape-string constant that holds only ASCII:
// quotes and backslashes are escaped, control characters and everything
// beyond ASCII become \x or \u / \U escapes. E” strings are read the same
// whatever standard_conforming_strings says, and ASCII bytes mean the same
// in every client encoding Postgres supports, so no value can end the
// literal early.
func writeLiteral(b *strings.Builder, s string) {
	b.WriteString("E'")
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '\'' || c == '\\':
				b.WriteByte('\\')
				b.WriteByte(c)
			case c < 0x20 || c == 0x7f:
				fmt.Fprintf(b, `\x%02x`, c)
			default:
				b.WriteByte(c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r <= 0xffff {
			fmt.Fprintf(b, `\u%04x`, r)
		} else {
			fmt.Fprintf(b, `\U%08x`, r)
		}
		i += size
	}
	b.WriteByte('\'')
}

// writeSettingName writes a dotted setting name with each part quoted.
func writeSettingName(b *strings.Builder, name string) error {
	parts := strings.Split(name, ".")
	if len(parts) < 2 {
		return fmt.Errorf("setting name %q has no dot", name)
	}
	for i, part := range parts {
		if !authn.IsSettingIdent(part) {
			return fmt.Errorf("setting name %q is not an identifier path", name)
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteByte('"')
		b.WriteString(part)
		b.WriteByte('"')
	}
	return nil
}

// appendParse appends a Parse message with no parameter types.
func appendParse(dst []byte, name, sql string) []byte {
	at := len(dst)
	dst = append(dst, 'P', 0, 0, 0, 0)
	dst = append(append(dst, name...), 0)
	dst = append(append(dst, sql...), 0)
	dst = binary.BigEndian.AppendUint16(dst, 0)
	binary.BigEndian.PutUint32(dst[at+1:], uint32(len(dst)-at-1))
	return dst
}

// appendExecute appends an Execute of portal for all rows.
func appendExecute(dst []byte, portal string) []byte {
	at := len(dst)
	dst = append(dst, 'E', 0, 0, 0, 0)
	dst = append(append(dst, portal...), 0)
	dst = binary.BigEndian.AppendUint32(dst, 0)
	binary.BigEndian.PutUint32(dst[at+1:], uint32(len(dst)-at-1))
	return dst
}

// appendClosePortal appends a Close of portal.
func appendClosePortal(dst []byte, portal string) []byte {
	at := len(dst)
	dst = append(dst, 'C', 0, 0, 0, 0, 'P')
	dst = append(append(dst, portal...), 0)
	binary.BigEndian.PutUint32(dst[at+1:], uint32(len(dst)-at-1))
	return dst
}
