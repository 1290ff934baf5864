// Package scenario reads and plays the protocol scenarios of
// testdata/scenarios (see its README.md): conversations in the Postgres
// protocol that tests replay directly against Postgres, through pgtoken, and
// against the model of Postgres in internal/pgmodel, comparing the
// normalized replies. It is test infrastructure: only tests import it.
package scenario

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Preset is what a direct connection (logged in as the authenticator) runs
// first to stand where pgtoken puts a client with the test token
// {"role": "web_user", "sub": "alice"}: the role and claims set for the
// whole session.
const Preset = "set role web_user; set jwt.claims.sub = 'alice'; set jwt.claims.role = 'web_user'"

// Scenario is one conversation.
type Scenario struct {
	Name   string
	Proxy  bool // "mode proxy": through pgtoken only, replies given in expect blocks
	Blocks []Block
}

// Block is one send, until, read, sleep or expect block.
type Block struct {
	Kind   string // send, until, read, sleep, expect
	Msgs   []pgproto3.FrontendMessage
	N      int           // until: how many ReadyForQuery to read; read: how many replies
	Sleep  time.Duration // sleep: how long
	Expect []string
	Line   int
}

// Expected returns the replies a proxy scenario's expect blocks give.
func (sc *Scenario) Expected() []string {
	var want []string
	for _, b := range sc.Blocks {
		want = append(want, b.Expect...)
	}
	return want
}

// Dir returns the scenarios directory of the repository.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "scenarios")
}

// All reads every scenario of the repository, in file name order.
func All() ([]*Scenario, error) {
	paths, err := filepath.Glob(filepath.Join(Dir(), "*.txt"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, errors.New("no scenarios found")
	}
	out := make([]*Scenario, 0, len(paths))
	for _, p := range paths {
		sc, err := ParseFile(p)
		if err != nil {
			return nil, err
		}
		out = append(out, sc)
	}
	return out, nil
}

// ParseFile reads one scenario file.
func ParseFile(path string) (*Scenario, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(filepath.Base(path), f)
}

// Parse reads a scenario; name is used in messages.
func Parse(name string, r io.Reader) (*Scenario, error) {
	sc := &Scenario{Name: name}
	var cur *Block
	var group []pgproto3.FrontendMessage // inside repeat N ... end
	repeat := 0
	ln := 0
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		ln++
		line := strings.TrimSpace(s.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case cur == nil && line == "mode proxy":
			sc.Proxy = true
		case cur == nil && line == "send", cur == nil && line == "expect":
			cur = &Block{Kind: line, Line: ln}
		case cur == nil && strings.HasPrefix(line, "until"):
			cur = &Block{Kind: "until", N: 1, Line: ln}
			if _, err := fmt.Sscanf(line, "until %d", &cur.N); err != nil && line != "until" {
				return nil, fmt.Errorf("%s:%d: want until N", name, ln)
			}
		case cur == nil && strings.HasPrefix(line, "read "):
			cur = &Block{Kind: "read", Line: ln}
			if _, err := fmt.Sscanf(line, "read %d", &cur.N); err != nil {
				return nil, fmt.Errorf("%s:%d: want read N", name, ln)
			}
		case cur == nil && strings.HasPrefix(line, "sleep "):
			d, err := time.ParseDuration(strings.TrimPrefix(line, "sleep "))
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, ln, err)
			}
			cur = &Block{Kind: "sleep", Sleep: d, Line: ln}
		case line == "----":
			if cur == nil || repeat > 0 {
				return nil, fmt.Errorf("%s:%d: ---- outside a block or inside repeat", name, ln)
			}
			sc.Blocks = append(sc.Blocks, *cur)
			cur = nil
		case cur != nil && cur.Kind == "send" && strings.HasPrefix(line, "repeat "):
			if repeat > 0 {
				return nil, fmt.Errorf("%s:%d: repeat inside repeat", name, ln)
			}
			if _, err := fmt.Sscanf(line, "repeat %d", &repeat); err != nil || repeat < 1 {
				return nil, fmt.Errorf("%s:%d: want repeat N (N > 0)", name, ln)
			}
			group = nil
		case cur != nil && cur.Kind == "send" && line == "end" && repeat > 0:
			for ; repeat > 0; repeat-- {
				cur.Msgs = append(cur.Msgs, group...)
			}
		case cur != nil && cur.Kind == "send":
			m, err := FrontendMessage(line)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, ln, err)
			}
			if repeat > 0 {
				group = append(group, m)
			} else {
				cur.Msgs = append(cur.Msgs, m)
			}
		case cur != nil && cur.Kind == "expect":
			cur.Expect = append(cur.Expect, line)
		default:
			return nil, fmt.Errorf("%s:%d: unexpected %q", name, ln, line)
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("%s: block at line %d has no ----", name, cur.Line)
	}
	return sc, s.Err()
}

// FrontendMessage decodes "Type {json}". Fields are pgproto3's; a
// FunctionCall's Arguments are given like a Bind's Parameters
// ([{"text": "-1"}], sent in text format).
func FrontendMessage(line string) (pgproto3.FrontendMessage, error) {
	typ, js, _ := strings.Cut(line, " ")
	var m pgproto3.FrontendMessage
	switch typ {
	case "Query":
		m = &pgproto3.Query{}
	case "Parse":
		m = &pgproto3.Parse{}
	case "Bind":
		m = &pgproto3.Bind{}
	case "Describe":
		m = &pgproto3.Describe{}
	case "Execute":
		m = &pgproto3.Execute{}
	case "Close":
		m = &pgproto3.Close{}
	case "Sync":
		m = &pgproto3.Sync{}
	case "Flush":
		m = &pgproto3.Flush{}
	case "CopyData":
		var d struct{ Data string }
		if err := json.Unmarshal([]byte(js), &d); err != nil {
			return nil, err
		}
		return &pgproto3.CopyData{Data: []byte(d.Data)}, nil
	case "CopyDone":
		m = &pgproto3.CopyDone{}
	case "CopyFail":
		m = &pgproto3.CopyFail{}
	case "FunctionCall":
		var d struct {
			Function  uint32
			Arguments []map[string]string
		}
		if err := json.Unmarshal([]byte(js), &d); err != nil {
			return nil, fmt.Errorf("FunctionCall: %w", err)
		}
		fc := &pgproto3.FunctionCall{Function: d.Function}
		for _, a := range d.Arguments {
			v, ok := a["text"]
			if !ok || len(a) != 1 {
				return nil, errors.New(`FunctionCall: arguments are {"text": "..."}`)
			}
			fc.Arguments = append(fc.Arguments, []byte(v))
		}
		return fc, nil
	default:
		return nil, fmt.Errorf("unknown frontend message %q", typ)
	}
	if strings.TrimSpace(js) != "" {
		if err := json.Unmarshal([]byte(js), m); err != nil {
			return nil, fmt.Errorf("%s: %w", typ, err)
		}
	}
	return m, nil
}

// Normalize renders a backend message for comparison, or "" to skip it:
// what the server reports about itself (ParameterStatus, BackendKeyData)
// and notices are skipped; of a RowDescription only the column names count.
func Normalize(m pgproto3.BackendMessage) string {
	switch m := m.(type) {
	case *pgproto3.ParameterStatus, *pgproto3.BackendKeyData, *pgproto3.NoticeResponse:
		return ""
	case *pgproto3.RowDescription:
		var names []string
		for _, f := range m.Fields {
			names = append(names, string(f.Name))
		}
		return "RowDescription " + strings.Join(names, ",")
	case *pgproto3.DataRow:
		var vals []string
		for _, v := range m.Values {
			if v == nil {
				vals = append(vals, "NULL")
			} else {
				vals = append(vals, string(v))
			}
		}
		return "DataRow " + strings.Join(vals, "|")
	case *pgproto3.CommandComplete:
		return "CommandComplete " + string(m.CommandTag)
	case *pgproto3.ErrorResponse:
		return fmt.Sprintf("ErrorResponse %s %s position=%d", m.Code, m.Message, m.Position)
	case *pgproto3.ReadyForQuery:
		return "ReadyForQuery " + string(m.TxStatus)
	case *pgproto3.ParameterDescription:
		return fmt.Sprintf("ParameterDescription %v", m.ParameterOIDs)
	case *pgproto3.CopyInResponse:
		return "CopyInResponse"
	case *pgproto3.CopyOutResponse:
		return "CopyOutResponse"
	case *pgproto3.CopyData:
		return "CopyData " + strings.TrimRight(string(m.Data), "\n")
	default:
		return strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3.")
	}
}

// Conn is a logged-in protocol connection a scenario plays on.
type Conn struct {
	FE *pgproto3.Frontend
	NC net.Conn
	// Notices keeps NoticeResponses in the replies (as "Notice <code>
	// <message>"), for looking at what the server says.
	Notices bool
}

// Play runs a scenario on c and returns the normalized replies. Every
// until block must be satisfied before the deadline.
func (c Conn) Play(sc *Scenario, timeout time.Duration) ([]string, error) {
	var out []string
	_ = c.NC.SetReadDeadline(time.Now().Add(timeout))
	defer c.NC.SetReadDeadline(time.Time{})
	for _, b := range sc.Blocks {
		switch b.Kind {
		case "send":
			for _, m := range b.Msgs {
				c.FE.Send(m)
			}
			if err := c.FE.Flush(); err != nil {
				return out, fmt.Errorf("%s:%d: send: %w", sc.Name, b.Line, err)
			}
		case "until", "read":
			n, ready := b.N, true
			if b.Kind == "read" {
				ready = false
			}
			got, err := c.receive(n, ready)
			out = append(out, got...)
			if err != nil {
				return out, fmt.Errorf("%s:%d: receive (after %q): %w", sc.Name, b.Line, out, err)
			}
		case "sleep":
			time.Sleep(b.Sleep)
		}
	}
	return out, nil
}

// Until reads replies until n ReadyForQuery messages arrived and returns
// them normalized.
func (c Conn) Until(n int) ([]string, error) { return c.receive(n, true) }

// receive reads until n ReadyForQuery messages (ready) or n replies that
// count (those Normalize keeps) arrived.
func (c Conn) receive(n int, ready bool) ([]string, error) {
	var out []string
	for got := 0; got < n; {
		m, err := c.FE.Receive()
		if err != nil {
			return out, err
		}
		switch m := m.(type) {
		case *pgproto3.ReadyForQuery:
			if ready {
				got++
			}
		case *pgproto3.NoticeResponse:
			if c.Notices {
				out = append(out, fmt.Sprintf("Notice %s %s", m.Code, m.Message))
			}
		}
		if s := Normalize(m); s != "" {
			out = append(out, s)
			if !ready {
				got++
			}
		}
	}
	return out, nil
}

// PlayDirect logs in to a server (Postgres or the model) as dsn says, sets
// the test token's identity for the session (Preset) and plays sc.
func PlayDirect(dsn string, sc *Scenario, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, Preset).ReadAll(); err != nil {
		return nil, fmt.Errorf("preset: %w", err)
	}
	return Conn{FE: c.Frontend(), NC: c.Conn()}.Play(sc, timeout)
}

// Diff shows where two reply lists part: the replies from a little before
// the first difference on, side by side; "" when they are equal.
func Diff(got, want []string) string {
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return ""
	}
	first := 0
	for first < len(got) && first < len(want) && got[first] == want[first] {
		first++
	}
	var b strings.Builder
	from := max(0, first-3)
	fmt.Fprintf(&b, "(replies %d.. of %d, want %d)\n", from+1, len(got), len(want))
	for i := from; i < len(got) || i < len(want); i++ {
		if i > first+25 {
			b.WriteString("  ...\n")
			break
		}
		g, w := "-", "-"
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		mark := "  "
		if g != w {
			mark = "≠ "
		}
		fmt.Fprintf(&b, "%s%-60s | %s\n", mark, g, w)
	}
	return b.String()
}
