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
// transaction needs are built once per session; the rare forms are
// rendered from the identity when they are needed, so an idle session
// holds little more than its two forms.
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
	// set_config($1,$2,true), ... with one pair per setting, shared by
	// every client whose token has as many settings. args are this
	// client's Bind parameters for it (and for the session form, which
	// takes the same pairs).
	stmt *ownStmt
	args []byte
}

// ownStmt is one of pgtoken's own statements, parsed once per server
// connection under a name that begins with pgtoken_ (a name no client can
// use: see isReserved and the guard).
type ownStmt struct {
	name string
	sql  string
}

// ownStmts holds one statement per number of settings, shared by every
// session of a Server: SELECT pg_catalog.set_config($1,$2,<local>), ...
type ownStmts struct {
	prefix string
	local  bool
	m      sync.Map // int → *ownStmt
}

// get returns the statement for n settings.
func (o *ownStmts) get(n int) *ownStmt {
	if v, ok := o.m.Load(n); ok {
		return v.(*ownStmt)
	}
	var q strings.Builder
	q.WriteString("SELECT ")
	for i := range n {
		if i > 0 {
			q.WriteByte(',')
		}
		fmt.Fprintf(&q, "pg_catalog.set_config($%d,$%d,%t)", 2*i+1, 2*i+2, o.local)
	}
	st := &ownStmt{name: o.prefix + strconv.Itoa(n), sql: q.String()}
	v, _ := o.m.LoadOrStore(n, st)
	return v.(*ownStmt)
}

// ownPortal names the portal of pgtoken's statements when the client's
// unnamed portal must not be replaced.
const ownPortal = "pgtoken_p"

// resetStmts undo, one statement each, whatever session state a client
// may have left on a server connection: settings of every name (RESET ALL
// clears placeholders too, but not the role), the role and session-level
// advisory locks, cursors, LISTEN, temporary objects, and the sequence
// values lastval and currval answer. They may run inside a transaction
// block, so they share the next client's first transaction; prepared
// statements are pgtoken's own (stmts.go) and stay.
var resetStmts = []*ownStmt{
	{name: "pgtoken_reset_1", sql: "RESET ALL"},
	{name: "pgtoken_reset_2", sql: "SELECT pg_catalog.set_config('role','none',false),pg_catalog.pg_advisory_unlock_all()"},
	{name: "pgtoken_reset_3", sql: "CLOSE ALL"},
	{name: "pgtoken_reset_4", sql: "UNLISTEN *"},
	{name: "pgtoken_reset_5", sql: "DISCARD TEMP"},
	{name: "pgtoken_reset_6", sql: "DISCARD SEQUENCES"},
}

// ResetSQL returns the statements of the hand-over reset, in the order they
// run (make bench measures what they cost Postgres).
func ResetSQL() []string {
	out := make([]string, len(resetStmts))
	for i, st := range resetStmts {
		out[i] = st.sql
	}
	return out
}

// resetText is the reset in the simple protocol, and resetCount how many
// statements it holds.
var resetText, resetCount = func() (string, int) {
	var b strings.Builder
	for _, st := range resetStmts {
		b.WriteString(st.sql)
		b.WriteByte(';')
	}
	return b.String(), len(resetStmts)
}()

// maxSettings bounds how many settings a token may carry (and so the size of
// the prelude); Postgres allows at most 65535 bind parameters.
const maxSettings = 1000

// newPrelude builds a client's prelude from its verified identity; stmts
// supplies the shared extended-protocol statement.
func newPrelude(id *authn.Identity, stmts *ownStmts) (*prelude, error) {
	if len(id.Settings)+1 > maxSettings {
		return nil, fmt.Errorf("token carries %d claims; at most %d are supported", len(id.Settings), maxSettings-1)
	}
	simple, err := setText(id, "SET LOCAL ")
	if err != nil {
		return nil, err
	}
	p := &prelude{id: id, simple: simple, statements: len(id.Settings) + 1, stmt: stmts.get(len(id.Settings) + 1)}
	pairs := make([]string, 0, 2*p.statements)
	pairs = append(pairs, "role", id.Role)
	for _, s := range id.Settings {
		pairs = append(pairs, s.Name, s.Value)
	}
	p.args = bindArgs(pairs)
	return p, nil
}

// settings is how many settings the prelude sets, the role included.
func (p *prelude) settings() int { return p.statements }

// bindArgs encodes the parameter section of a Bind (after the statement
// name) of text values, at exact size.
func bindArgs(vals []string) []byte {
	size := 2 + 2 + 2
	for _, v := range vals {
		size += 4 + len(v)
	}
	b := make([]byte, 0, size)
	b = binary.BigEndian.AppendUint16(b, 0) // all parameters in text
	b = binary.BigEndian.AppendUint16(b, uint16(len(vals)))
	for _, v := range vals {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return binary.BigEndian.AppendUint16(b, 0) // all results in text
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

// replayText renders session settings as one statement that sets them for
// the session: SELECT pg_catalog.set_config('name','value',false), ...;
func replayText(names []string, values map[string]string) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("pg_catalog.set_config(")
		writeLiteral(&b, n)
		b.WriteByte(',')
		writeLiteral(&b, values[n])
		b.WriteString(",false)")
	}
	b.WriteByte(';')
	return b.String()
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
