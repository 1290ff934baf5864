package session_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// A scenario (testdata/scenarios/*.txt) is a protocol conversation:
//
//	# comment
//	send
//	Query {"String": "select 1"}
//	Parse {"Name": "s1", "Query": "select $1::int"}
//	Bind {"PreparedStatement": "s1", "Parameters": [{"text": "7"}]}
//	Execute {}
//	Sync
//	----
//	until 2
//	----
//
// "send" blocks list frontend messages (pgproto3 type name and its fields
// as JSON); "until N" reads until N ReadyForQuery messages arrived. Each
// scenario runs directly against Postgres (as the authenticator with the
// token's role and claims set for the whole session) and through pgtoken
// (with the token), and the replies, normalized, must be the same. A
// scenario whose replies through pgtoken are meant to differ (the guard)
// says "mode proxy" and gives the expected replies in "expect" blocks.

type scenario struct {
	name   string
	proxy  bool // run through pgtoken only
	blocks []block
}

type block struct {
	kind   string // send, until, expect
	msgs   []pgproto3.FrontendMessage
	n      int
	expect []string
	line   int
}

func parseScenario(path string) (*scenario, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := &scenario{name: filepath.Base(path)}
	var cur *block
	ln := 0
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		ln++
		line := strings.TrimSpace(s.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case cur == nil && line == "mode proxy":
			sc.proxy = true
		case cur == nil && line == "send", cur == nil && line == "expect":
			cur = &block{kind: line, line: ln}
		case cur == nil && strings.HasPrefix(line, "until"):
			cur = &block{kind: "until", n: 1, line: ln}
			if _, err := fmt.Sscanf(line, "until %d", &cur.n); err != nil && line != "until" {
				return nil, fmt.Errorf("%s:%d: want until N", path, ln)
			}
		case line == "----":
			if cur == nil {
				return nil, fmt.Errorf("%s:%d: ---- outside a block", path, ln)
			}
			sc.blocks = append(sc.blocks, *cur)
			cur = nil
		case cur != nil && cur.kind == "send":
			m, err := frontendMessage(line)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, ln, err)
			}
			cur.msgs = append(cur.msgs, m)
		case cur != nil && cur.kind == "expect":
			cur.expect = append(cur.expect, line)
		default:
			return nil, fmt.Errorf("%s:%d: unexpected %q", path, ln, line)
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("%s: block at line %d has no ----", path, cur.line)
	}
	return sc, s.Err()
}

// frontendMessage decodes "Type {json}".
func frontendMessage(line string) (pgproto3.FrontendMessage, error) {
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

// normalize renders a backend message for comparison, or "" to skip it.
func normalize(m pgproto3.BackendMessage) string {
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

// play runs a scenario on c and returns the normalized replies.
func play(t *testing.T, c *pgconn.PgConn, sc *scenario) []string {
	t.Helper()
	fe := c.Frontend()
	var out []string
	deadline := time.Now().Add(30 * time.Second)
	_ = c.Conn().SetReadDeadline(deadline)
	defer c.Conn().SetReadDeadline(time.Time{})
	for _, b := range sc.blocks {
		switch b.kind {
		case "send":
			for _, m := range b.msgs {
				fe.Send(m)
			}
			if err := fe.Flush(); err != nil {
				t.Fatalf("%s:%d: send: %v", sc.name, b.line, err)
			}
		case "until":
			for n := 0; n < b.n; {
				m, err := fe.Receive()
				if err != nil {
					t.Fatalf("%s:%d: receive (after %q): %v", sc.name, b.line, out, err)
				}
				if _, ok := m.(*pgproto3.ReadyForQuery); ok {
					n++
				}
				if s := normalize(m); s != "" {
					out = append(out, s)
				}
			}
		}
	}
	return out
}

func TestScenariosMatchPostgres(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(pgtest.Root(), "testdata", "scenarios", "*.txt"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	tok := pgtest.Token(t, map[string]any{"role": "web_user", "sub": "alice"})
	for _, p := range paths {
		sc, err := parseScenario(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(strings.TrimSuffix(sc.name, ".txt"), func(t *testing.T) {
			// Each run gets a database of its own, so what one run writes
			// the other does not see.
			env := pgtest.Start(t, nil)
			through := play(t, env.Connect(tok), sc)
			var want []string
			for _, b := range sc.blocks {
				want = append(want, b.expect...)
			}
			if !sc.proxy {
				pg, db := pgtest.NewDB(t)
				d, err := pgconn.Connect(ctx(t), pg.DSN("authenticator", "secret", db))
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close(ctx(t))
				rows(t, d, "set role web_user; set jwt.claims.sub = 'alice'; set jwt.claims.role = 'web_user'")
				want = play(t, d, sc)
			}
			if strings.Join(through, "\n") != strings.Join(want, "\n") {
				t.Fatalf("through pgtoken:\n  %s\nwant (%s):\n  %s", strings.Join(through, "\n  "),
					map[bool]string{true: "expect", false: "direct"}[sc.proxy], strings.Join(want, "\n  "))
			}
		})
	}
}
