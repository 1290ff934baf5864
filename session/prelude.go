package session

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pgtoken/pgtoken/authn"
)

// prelude is what every transaction of one client begins with: its role and
// its claim settings, local to the transaction. It is built once per
// session, in the two forms the protocols need, and appended as bytes.
type prelude struct {
	// simple is "SET LOCAL ROLE ...;SET LOCAL ... TO ...;": pure ASCII, so
	// it reads the same in every client encoding and its length in bytes is
	// its length in characters (error positions are shifted by it).
	simple string
	// statements is how many statements simple holds (each answers one
	// CommandComplete that the client must not see).
	statements int

	// stmtName/stmtSQL name the parameterised statement the extended form
	// binds: SELECT set_config($1,$2,true), ... with one pair per setting.
	// It is prepared once per server connection and shared by every client
	// whose token has as many settings.
	stmtName string
	stmtSQL  string
	// parse is the Parse message for stmtSQL; bind is the Bind message of
	// this client's values into the unnamed portal; execute runs it.
	parse []byte
	bind  []byte
	// bindNamed, executeNamed and closeNamed run the prelude in a portal of
	// its own, for when the client's unnamed portal must not be replaced.
	bindNamed, executeNamed, closeNamed []byte

	// sessionSet and sessionReset set the role and claims for the whole
	// session and undo that, for statements that cannot run inside a
	// transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...).
	sessionSet, sessionReset string
}

// preludePortal names the portal of the prelude when the unnamed one is
// taken.
const preludePortal = "pgtoken_prelude"

// maxSettings bounds how many settings a token may carry (and so the size of
// the prelude); Postgres allows at most 65535 bind parameters.
const maxSettings = 1000

// newPrelude builds a client's prelude from its verified identity.
func newPrelude(id *authn.Identity) (*prelude, error) {
	if len(id.Settings)+1 > maxSettings {
		return nil, fmt.Errorf("token carries %d claims; at most %d are supported", len(id.Settings), maxSettings-1)
	}
	simple, err := setText(id, "SET LOCAL ")
	if err != nil {
		return nil, err
	}
	session, err := setText(id, "SET ")
	if err != nil {
		return nil, err
	}
	n := len(id.Settings) + 1
	p := &prelude{simple: simple, statements: n, sessionSet: session}
	var r strings.Builder
	r.WriteString("RESET ROLE;")
	for _, s := range id.Settings {
		r.WriteString("RESET ")
		_ = writeSettingName(&r, s.Name)
		r.WriteByte(';')
	}
	p.sessionReset = r.String()

	p.stmtName = "pgtoken_prelude_" + strconv.Itoa(n)
	var q strings.Builder
	q.WriteString("SELECT ")
	for i := range n {
		if i > 0 {
			q.WriteByte(',')
		}
		fmt.Fprintf(&q, "pg_catalog.set_config($%d,$%d,true)", 2*i+1, 2*i+2)
	}
	p.stmtSQL = q.String()
	p.parse = appendParse(nil, p.stmtName, p.stmtSQL)

	params := make([]string, 0, 2*n)
	params = append(params, "role", id.Role)
	for _, s := range id.Settings {
		params = append(params, s.Name, s.Value)
	}
	p.bind = appendBind(nil, "", p.stmtName, params)
	p.bindNamed = appendBind(nil, preludePortal, p.stmtName, params)
	p.executeNamed = appendExecute(nil, preludePortal)
	p.closeNamed = appendClosePortal(nil, preludePortal)
	return p, nil
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
	return b.String(), nil
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

// appendBind appends a Bind of text parameters into portal, with text
// results.
func appendBind(dst []byte, portal, stmt string, params []string) []byte {
	at := len(dst)
	dst = append(dst, 'B', 0, 0, 0, 0)
	dst = append(append(dst, portal...), 0)
	dst = append(append(dst, stmt...), 0)
	dst = binary.BigEndian.AppendUint16(dst, 0) // all parameters in text
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(params)))
	for _, p := range params {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(p)))
		dst = append(dst, p...)
	}
	dst = binary.BigEndian.AppendUint16(dst, 0) // all results in text
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
