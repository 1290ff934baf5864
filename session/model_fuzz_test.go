package session_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgmodel"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/internal/scenario"
	"github.com/pgtoken/pgtoken/session"
)

// FuzzSessionAgainstModel drives two clients, alternating, through
// pgtoken with one server connection to the model of Postgres, with
// random message sequences from a small alphabet of statements and
// message types (decodeSteps). The same sequences run directly against a
// second model, each client on a connection of its own with its identity
// set for the session. It asserts:
//
//   - every client statement the model ran through pgtoken had that
//     client's role and claims in force (and no other claims);
//   - each client gets the same answers as directly: as many
//     ReadyForQuery as Postgres gives it for its sync points (none for a
//     Query or FunctionCall skipped after an error), everything a Flush
//     asks for, in order;
//   - no hang: each step's answers arrive within fuzzStepTimeout.
//
// A client hands over to the other only when it stands outside any
// transaction and batch (directly), so the two share the server
// connection as a pool of one allows. The seed corpus is in
// testdata/fuzz/FuzzSessionAgainstModel; go test runs it, go test -fuzz
// explores (the setup is made once per fuzzing process).
func FuzzSessionAgainstModel(f *testing.F) {
	for _, seed := range fuzzSeeds {
		f.Add(encodeSteps(seed))
	}
	h := newFuzzHarness(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		h.run(t, decodeSteps(data))
	})
}

// avoid leaves parts of the alphabet out, so that fuzzing goes past a
// known defect: go test -fuzz FuzzSessionAgainstModel -model.avoid
// empty,call-query. Besides statement names (fuzzStatements) it takes
// late-sync (a step with extended messages ends with a Sync) and
// stale-portal (the unnamed portal is executed or described only after a
// Bind of it in the same step), unnamed-stmt (the unnamed statement is
// bound or described only after a Parse of it since the step's last sync
// point), close-stmt (no Close of a statement), named-parse (no Parse of a
// named statement), reset-portal (no Bind of a transaction statement),
// mid-batch-query (no Query or FunctionCall after extended messages
// before a Sync), call-query (no CALL in a Query) and portal-text (pgtoken's text for a missing unnamed portal is
// taken as Postgres's).
var avoid = flag.String("model.avoid", "", "comma-separated parts of the fuzzer's alphabet to leave out")

// fuzzStepTimeout bounds the wait for one step's answers through pgtoken.
const fuzzStepTimeout = 3 * time.Second

// fuzzStatement is a statement of the fuzzer's alphabet; {tag} becomes
// the client's tag (a comment naming it, so each record says whose it
// is) and {client} its name.
type fuzzStatement struct {
	name string
	sql  string
}

var fuzzStatements = []fuzzStatement{
	{"who", "select current_user::text, coalesce(current_setting('jwt.claims.sub', true), ''), coalesce(current_setting('jwt.claims.tenant', true), '') {tag}"},
	{"begin", "begin"},
	{"commit", "commit"},
	{"rollback", "rollback"},
	{"commit-chain", "commit and chain"},
	{"rollback-chain", "rollback and chain"},
	{"savepoint", "savepoint a"},
	{"release", "release savepoint a"},
	{"rollback-to", "rollback to savepoint a"},
	{"div0", "select 1/0 {tag}"},
	{"nosetting", "select current_setting('jwt.claims.nosuch') {tag}"},
	{"set", "set app.flag = '{client}' {tag}"},
	{"set-local", "set local app.flag = '{client}-local' {tag}"},
	{"show", "select coalesce(current_setting('app.flag', true), '') {tag}"},
	{"call", "call commit_inside() {tag}"},
	{"series", "select g from generate_series(1, 3) g {tag}"},
	{"prepare-tx", "prepare transaction 'x'"},
	{"set-config", "select set_config('app.flag', '{client}-cfg', false) {tag}"},
	{"big", "select repeat('x', 9000) || current_user {tag}"},
	{"vacuum", "vacuum notes {tag}"},
	{"empty", ""},
	{"timeout", "set statement_timeout = '7s' {tag}"},
	{"show-timeout", "show statement_timeout"},
}

// fuzzMsg is one message of a step, before it is given a client's tag.
type fuzzMsg struct {
	typ     byte // Q P B E D C S H F
	stmts   []int
	name    string // statement (P, B, D S, C S) or portal (E, D P, C P)
	portal  string // B
	maxRows uint32 // E
	kind    byte   // D, C: 'S' or 'P'
}

// fuzzStep is what one client sends in one write, then reads the answers.
type fuzzStep struct {
	client int
	msgs   []fuzzMsg
}

// decodeSteps turns fuzz input into steps: each byte picks a message (or
// ends the step, or hands over to the other client), the bytes after it
// its statements and names.
func decodeSteps(data []byte) []fuzzStep {
	var steps []fuzzStep
	cur := fuzzStep{}
	i := 0
	next := func() int {
		if i >= len(data) {
			return 0
		}
		i++
		return int(data[i-1])
	}
	stmt := func() int { return next() % len(fuzzStatements) }
	end := func(other bool) {
		if len(cur.msgs) > 0 {
			steps = append(steps, cur)
		}
		c := cur.client
		if other {
			c = 1 - c
		}
		cur = fuzzStep{client: c}
	}
	names := []string{"", "s0", "s1"}
	total := 0
	for i < len(data) && total < 80 && len(steps) < 24 {
		switch op := next() % 16; op {
		case 0:
			cur.msgs = append(cur.msgs, fuzzMsg{typ: 'S'})
		case 1:
			cur.msgs = append(cur.msgs, fuzzMsg{typ: 'H'})
		case 2:
			end(false)
			continue
		case 3:
			end(true)
			continue
		case 4, 5, 13:
			n := map[int]int{4: 1, 5: 2, 13: 3}[op]
			m := fuzzMsg{typ: 'Q'}
			for range n {
				m.stmts = append(m.stmts, stmt())
			}
			cur.msgs = append(cur.msgs, m)
		case 6, 14:
			name := ""
			if op == 14 {
				name = names[1+next()%2]
			}
			cur.msgs = append(cur.msgs, fuzzMsg{typ: 'P', name: name, stmts: []int{stmt()}},
				fuzzMsg{typ: 'B', name: name}, fuzzMsg{typ: 'E'})
		case 7, 15:
			name := ""
			if op == 7 {
				name = names[1+next()%2]
			}
			cur.msgs = append(cur.msgs, fuzzMsg{typ: 'P', name: name, stmts: []int{stmt()}})
		case 8:
			b := next()
			m := fuzzMsg{typ: 'B', name: names[b%3]}
			if b&4 != 0 {
				m.portal = "p"
			}
			cur.msgs = append(cur.msgs, m)
		case 9:
			b := next()
			m := fuzzMsg{typ: 'E'}
			if b&1 != 0 {
				m.name = "p"
			}
			if b&2 != 0 {
				m.maxRows = 1
			}
			cur.msgs = append(cur.msgs, m)
		case 10, 11:
			b := next()
			m := fuzzMsg{typ: 'D', kind: 'S', name: names[b%3]}
			if op == 11 {
				m.typ = 'C'
			}
			if b&4 != 0 {
				m.kind, m.name = 'P', ""
				if b&8 != 0 {
					m.name = "p"
				}
			}
			cur.msgs = append(cur.msgs, m)
		case 12:
			cur.msgs = append(cur.msgs, fuzzMsg{typ: 'F'})
		}
		total++
	}
	end(false)
	return steps
}

// encodeSteps is decodeSteps's inverse, for writing seeds readably.
func encodeSteps(steps []fuzzStep) []byte {
	var out []byte
	client := 0
	for _, st := range steps {
		if st.client != client {
			out = append(out, 3)
			client = st.client
		} else if len(out) > 0 {
			out = append(out, 2)
		}
		for _, m := range st.msgs {
			switch m.typ {
			case 'S':
				out = append(out, 0)
			case 'H':
				out = append(out, 1)
			case 'F':
				out = append(out, 12)
			case 'Q':
				op := map[int]byte{1: 4, 2: 5, 3: 13}[len(m.stmts)]
				out = append(out, op)
				for _, s := range m.stmts {
					out = append(out, byte(s))
				}
			case 'P':
				if m.name == "" {
					out = append(out, 15, byte(m.stmts[0]))
				} else {
					out = append(out, 7, map[string]byte{"s0": 0, "s1": 1}[m.name], byte(m.stmts[0]))
				}
			case 'B':
				b := map[string]byte{"": 0, "s0": 1, "s1": 2}[m.name]
				if m.portal != "" {
					b |= 4
				}
				out = append(out, 8, b)
			case 'E':
				var b byte
				if m.name != "" {
					b |= 1
				}
				if m.maxRows > 0 {
					b |= 2
				}
				out = append(out, 9, b)
			case 'D', 'C':
				op := byte(10)
				if m.typ == 'C' {
					op = 11
				}
				b := map[string]byte{"": 0, "s0": 1, "s1": 2}[m.name]
				if m.kind == 'P' {
					b = 4
					if m.name != "" {
						b |= 8
					}
				}
				out = append(out, op, b)
			}
		}
	}
	return out
}

// frontend turns a fuzzMsg into the message client c sends; ok is false
// for a statement the flags leave out.
func (m fuzzMsg) frontend(tag, client string, skip map[string]bool) (pgproto3.FrontendMessage, bool) {
	text := func() (string, bool) {
		var parts []string
		for _, i := range m.stmts {
			s := fuzzStatements[i]
			if skip[s.name] {
				return "", false
			}
			if s.sql != "" {
				parts = append(parts, strings.NewReplacer("{tag}", tag, "{client}", client).Replace(s.sql))
			}
		}
		return strings.Join(parts, "; "), true
	}
	switch m.typ {
	case 'Q':
		sql, ok := text()
		if skip["call-query"] && strings.Contains(sql, "call ") {
			return nil, false
		}
		return &pgproto3.Query{String: sql}, ok
	case 'P':
		sql, ok := text()
		if strings.HasPrefix(sql, "vacuum") {
			// pgtoken runs VACUUM only as a Query of its own (README;
			// testdata/scenarios/vacuum-extended.txt).
			return nil, false
		}
		return &pgproto3.Parse{Name: m.name, Query: sql}, ok
	case 'B':
		return &pgproto3.Bind{PreparedStatement: m.name, DestinationPortal: m.portal}, true
	case 'E':
		return &pgproto3.Execute{Portal: m.name, MaxRows: m.maxRows}, true
	case 'D':
		return &pgproto3.Describe{ObjectType: m.kind, Name: m.name}, true
	case 'C':
		return &pgproto3.Close{ObjectType: m.kind, Name: m.name}, true
	case 'S':
		return &pgproto3.Sync{}, true
	case 'H':
		return &pgproto3.Flush{}, true
	case 'F':
		return &pgproto3.FunctionCall{Function: 957, Arguments: [][]byte{[]byte("-1")}}, true
	}
	return nil, false
}

// fuzzHarness is pgtoken in front of one model, a second model for the
// direct runs, and the two clients' tokens.
type fuzzHarness struct {
	mu      sync.Mutex // one input at a time: they share the server connection
	log     logBuffer  // pgtoken's log
	proxied *pgmodel.Server
	direct  *pgmodel.Server
	env     *pgtest.Env
	clients [2]modelClient
	presets [2]string
	skip    map[string]bool
}

func newFuzzHarness(tb testing.TB) *fuzzHarness {
	h := &fuzzHarness{skip: map[string]bool{}}
	for _, n := range strings.Split(*avoid, ",") {
		if n != "" {
			h.skip[n] = true
		}
	}
	if err := h.start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.stop)
	h.clients[0] = newModelClient(tb, "web_user", map[string]string{"sub": "c0", "tenant": "t0"})
	h.clients[1] = newModelClient(tb, "web_admin", map[string]string{"sub": "c1"})
	for i, c := range h.clients {
		var b strings.Builder
		fmt.Fprintf(&b, "set role %s", c.id.Role)
		for k, v := range c.id.Claims {
			fmt.Fprintf(&b, "; set %s = '%s'", k, v)
		}
		h.presets[i] = b.String()
	}
	return h
}

// start starts the two models and pgtoken in front of one of them.
// pgtoken logs into a buffer (a fuzz target may not log through testing),
// shown when an input fails.
func (h *fuzzHarness) start() error {
	var err error
	if h.proxied, err = pgmodel.Start(); err != nil {
		return err
	}
	if h.direct, err = pgmodel.Start(); err != nil {
		return err
	}
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(&h.log), zap.DebugLevel)
	a, err := app.Start(context.Background(), modelConfig(h.proxied, func(c *config.Config) {
		c.Pool.WaitTimeout = config.Duration(fuzzStepTimeout / 2)
	}), zap.New(core))
	if err != nil {
		return err
	}
	<-a.UpstreamsChecked()
	h.env = &pgtest.Env{DB: "app", App: a}
	return nil
}

// stop stops what start started. A pgtoken that does not shut down in
// time (a session stuck for good) is left behind.
func (h *fuzzHarness) stop() {
	if h.env != nil {
		closed := make(chan struct{})
		go func() {
			_ = h.env.App.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(fuzzStepTimeout):
		}
	}
	h.proxied.Close()
	h.direct.Close()
}

// logBuffer keeps the last of a log.
type logBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if n := len(l.buf); n > 1<<16 {
		l.buf = append(l.buf[:0], l.buf[n-1<<15:]...)
	}
	return len(p), nil
}

// take returns the log since the last take.
func (l *logBuffer) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := string(l.buf)
	l.buf = l.buf[:0]
	return s
}

// fuzzConn is one client's pair of connections: through pgtoken and
// directly to the second model.
type fuzzConn struct {
	tag, name string
	through   *pgconn.PgConn
	direct    net.Conn
	directFE  *pgproto3.Frontend
	written   *countWriter
	pid       int32
	owed      int  // messages the direct connection owes, from its last state
	open      bool // directly: a batch or transaction is in progress
	// unsynced: extended messages were sent since the last sync point. A
	// pooler holds the server connection until the batch's Sync (as
	// PgBouncer does, until ReadyForQuery), even when the server has no
	// transaction open (after an Execute of COMMIT), so the clients hand
	// over only after it.
	unsynced  bool
	got, want []string
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// dialDirect logs in to the direct model and sets the client's identity
// for the session.
func (h *fuzzHarness) dialDirect(t *testing.T, c *fuzzConn, preset string) {
	t.Helper()
	nc, err := net.Dial("tcp", h.direct.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * fuzzStepTimeout))
	c.direct, c.written = nc, &countWriter{w: nc}
	c.directFE = pgproto3.NewFrontend(nc, c.written)
	c.directFE.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": pgmodel.LoginRole, "database": "app"}})
	c.directFE.Send(&pgproto3.Query{String: preset})
	if err := c.directFE.Flush(); err != nil {
		t.Fatal(err)
	}
	for ready := 0; ready < 2; {
		m, err := c.directFE.Receive()
		if err != nil {
			t.Fatalf("direct login: %v", err)
		}
		switch m := m.(type) {
		case *pgproto3.BackendKeyData:
			c.pid = int32(m.ProcessID)
		case *pgproto3.ReadyForQuery:
			ready++
		case *pgproto3.ErrorResponse:
			t.Fatalf("direct preset: %s", m.Message)
		}
	}
	st, ok := h.direct.Quiesce(c.pid, c.written.n)
	if !ok {
		t.Fatal("direct backend gone")
	}
	c.owed = st.Owed
}

func (h *fuzzHarness) run(t *testing.T, steps []fuzzStep) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.proxied.TakeRecords()
	h.log.take()
	var conns [2]*fuzzConn
	defer func() {
		if t.Failed() {
			t.Logf("pgtoken's log:\n%s\nthe model's log:\n%s", h.log.take(), h.proxied.Log())
			// What failed may have left pgtoken or the model in any
			// state: the next input gets new ones.
			for _, c := range conns {
				if c != nil {
					_ = c.through.Conn().Close()
					if c.direct != nil {
						_ = c.direct.Close()
					}
				}
			}
			h.stop()
			if err := h.start(); err != nil {
				t.Fatalf("restarting the harness: %v", err)
			}
		}
	}()
	for i := range conns {
		c := &fuzzConn{tag: fmt.Sprintf("/*c%d*/", i), name: fmt.Sprintf("c%d", i)}
		cx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		pc, err := pgconn.Connect(cx, h.env.DSN(h.clients[i].token))
		cancel()
		if err != nil {
			t.Fatalf("client %d: connect through pgtoken: %v", i, err)
		}
		c.through = pc
		conns[i] = c
		t.Cleanup(func() { _ = pc.Close(context.Background()) })
		h.dialDirect(t, c, h.presets[i])
	}
	// owner attributes records to clients: by the tag in their text, and
	// otherwise to the client whose step ran when they were made.
	type span struct{ from, client int }
	var spans []span
	var trace []string
	cur := 0
	for _, st := range steps {
		if st.client != cur && !conns[cur].open {
			cur = st.client // hand over only between transactions
		}
		c := conns[cur]
		var msgs []pgproto3.FrontendMessage
		var desc []string
		// The unnamed portal bound and statement parsed in this step, and
		// extended messages, since the step's last sync point.
		bound, parsed, extended := false, false, false
		control := false // the unnamed statement is a transaction statement
		for _, m := range st.msgs {
			fm, ok := m.frontend(c.tag, c.name, h.skip)
			if !ok {
				continue
			}
			switch fm := fm.(type) {
			case *pgproto3.Parse:
				if h.skip["named-parse"] && fm.Name != "" {
					continue
				}
				if fm.Name == "" {
					parsed = true
					first, _, _ := strings.Cut(fm.Query, " ")
					switch first {
					case "begin", "commit", "rollback", "savepoint", "release", "prepare":
						control = true
					default:
						control = false
					}
				}
			case *pgproto3.Bind:
				if h.skip["unnamed-stmt"] && fm.PreparedStatement == "" && !parsed {
					continue
				}
				if h.skip["reset-portal"] && fm.PreparedStatement == "" && control {
					continue
				}
				bound = bound || fm.DestinationPortal == ""
			case *pgproto3.Execute:
				if h.skip["stale-portal"] && fm.Portal == "" && !bound {
					continue
				}
			case *pgproto3.Describe:
				if h.skip["stale-portal"] && fm.ObjectType == 'P' && fm.Name == "" && !bound {
					continue
				}
				if h.skip["unnamed-stmt"] && fm.ObjectType == 'S' && fm.Name == "" && !parsed {
					continue
				}
			case *pgproto3.Close:
				if h.skip["close-stmt"] && fm.ObjectType == 'S' {
					continue
				}
			}
			switch fm.(type) {
			case *pgproto3.Query, *pgproto3.FunctionCall:
				if h.skip["mid-batch-query"] && extended {
					continue
				}
			}
			switch fm.(type) {
			case *pgproto3.Sync, *pgproto3.Query, *pgproto3.FunctionCall:
				bound, parsed, extended = false, false, false
			default:
				extended = true
			}
			msgs = append(msgs, fm)
			desc = append(desc, describeMsg(fm))
		}
		if h.skip["late-sync"] && extended {
			msgs = append(msgs, &pgproto3.Sync{})
			desc = append(desc, "Sync")
		}
		if len(msgs) == 0 {
			continue
		}
		trace = append(trace, fmt.Sprintf("%s: %s", c.name, strings.Join(desc, " ")))
		spans = append(spans, span{len(h.proxied.Records()), cur})
		if !h.step(t, c, msgs, trace) {
			return
		}
	}
	// The end: a Sync from each client, so that everything is answered.
	for _, c := range conns {
		trace = append(trace, c.name+": Sync")
		spans = append(spans, span{len(h.proxied.Records()), indexOf(conns[:], c)})
		if !h.step(t, c, []pgproto3.FrontendMessage{&pgproto3.Sync{}}, trace) {
			return
		}
	}
	for _, c := range conns {
		if d := scenario.Diff(c.got, c.want); d != "" {
			t.Errorf("%s: through pgtoken (left) and directly (right):\n%s\nsteps:\n  %s", c.name, d, strings.Join(trace, "\n  "))
		}
	}
	recs := h.proxied.Records()
	checkIdentity(t, recs, func(i int, r pgmodel.Record) (pgmodel.Identity, bool) {
		for c := range conns {
			if strings.Contains(r.Src, conns[c].tag) {
				return h.clients[c].id, true
			}
		}
		if r.Via == "procedure" {
			// A statement inside a procedure: the client whose CALL
			// ran last on that backend (its answer may come after the
			// harness moved on to another client's step).
			for j := i - 1; j >= 0; j-- {
				if recs[j].PID != r.PID {
					continue
				}
				for c := range conns {
					if strings.Contains(recs[j].Src, conns[c].tag) {
						return h.clients[c].id, true
					}
				}
			}
		}
		// Without a tag (a procedure's statement, a FunctionCall): the
		// client whose step was running.
		owner := -1
		for _, sp := range spans {
			if sp.from <= i {
				owner = sp.client
			}
		}
		if owner < 0 {
			return pgmodel.Identity{}, false
		}
		return h.clients[owner].id, true
	})
	if t.Failed() {
		t.Logf("steps:\n  %s", strings.Join(trace, "\n  "))
		return
	}
	h.checkReleased(t, conns, trace)
}

// checkReleased makes both clients leave and checks that pgtoken gives
// the server connection back clean: no session left, and the model's
// backends idle outside any transaction or batch (a backend still
// skipping until a Sync would ignore the next client's Query).
func (h *fuzzHarness) checkReleased(t *testing.T, conns [2]*fuzzConn, trace []string) {
	for _, c := range conns {
		_ = c.through.Close(context.Background())
	}
	deadline := time.Now().Add(fuzzStepTimeout)
	for {
		dirty := ""
		if d := session.DescribeSessions(h.env.App.Server); d != "" {
			dirty = "pgtoken's sessions:\n" + d
		}
		for _, b := range h.proxied.Backends() {
			if !b.Waiting || b.State.Open || b.State.Status != 'I' {
				dirty += "\nthe model's backends:\n" + h.proxied.Describe()
				break
			}
		}
		if dirty == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("after both clients left, pgtoken did not give the server connection back clean:\n%s\nsteps:\n  %s\nwhat the model ran:\n  %s",
				dirty, strings.Join(trace, "\n  "), strings.Join(recordLines(h.proxied.Records()), "\n  "))
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func indexOf(conns []*fuzzConn, c *fuzzConn) int {
	for i := range conns {
		if conns[i] == c {
			return i
		}
	}
	return -1
}

// step sends msgs directly and reads exactly what the client is owed,
// then sends them through pgtoken and reads as many answers, within
// fuzzStepTimeout; false means the run cannot go on.
func (h *fuzzHarness) step(t *testing.T, c *fuzzConn, msgs []pgproto3.FrontendMessage, trace []string) bool {
	t.Helper()
	for _, m := range msgs {
		c.directFE.Send(m)
	}
	if err := c.directFE.Flush(); err != nil {
		t.Fatalf("%s directly: %v", c.name, err)
	}
	st, ok := h.direct.Quiesce(c.pid, c.written.n)
	if !ok {
		t.Fatalf("%s: the direct backend closed the connection", c.name)
	}
	var want []string
	for n := st.Owed - c.owed; n > 0; n-- {
		m, err := c.directFE.Receive()
		if err != nil {
			t.Fatalf("%s directly: %v", c.name, err)
		}
		if s := scenario.Normalize(m); s != "" {
			want = append(want, s)
		}
	}
	for _, m := range msgs {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query, *pgproto3.FunctionCall:
			c.unsynced = false
		case *pgproto3.Flush:
		default:
			c.unsynced = true
		}
	}
	c.owed, c.open = st.Owed, st.Open || st.Status != 'I' || c.unsynced
	c.want = append(c.want, want...)

	fe := c.through.Frontend()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Errorf("%s through pgtoken: send: %v\nsteps:\n  %s", c.name, err, strings.Join(trace, "\n  "))
		return false
	}
	// As many ReadyForQuery as directly, then as many answers as came
	// directly after the last one (what a Flush asked for).
	ready, tail := 0, 0
	for _, s := range want {
		if strings.HasPrefix(s, "ReadyForQuery") {
			ready, tail = ready+1, 0
		} else {
			tail++
		}
	}
	_ = c.through.Conn().SetReadDeadline(time.Now().Add(fuzzStepTimeout))
	defer c.through.Conn().SetReadDeadline(time.Time{})
	for ready > 0 || tail > 0 {
		m, err := fe.Receive()
		if err != nil {
			t.Errorf("%s through pgtoken: %v (hang?)\n got: %q\nwant: %q\nsteps:\n  %s\nwhat the model ran:\n  %s\npgtoken's sessions:\n%s\nthe model's backends:\n%s\npgtoken's goroutines:\n%s",
				c.name, err, c.got, c.want, strings.Join(trace, "\n  "), strings.Join(recordLines(h.proxied.Records()), "\n  "),
				session.DescribeSessions(h.env.App.Server), h.proxied.Describe(), sessionGoroutines())
			return false
		}
		s := scenario.Normalize(m)
		if h.skip["portal-text"] {
			s = strings.Replace(s, "unnamed portal does not exist", `portal "" does not exist`, 1)
		}
		switch {
		case s == "":
			continue
		case ready > 0 && strings.HasPrefix(s, "ReadyForQuery"):
			ready--
		case ready == 0:
			tail--
		}
		c.got = append(c.got, s)
		if strings.Contains(s, "pgtoken runs a procedure (CALL or DO) outside a transaction block only") {
			// A procedure later in a batch that began otherwise: pgtoken
			// refuses it by design (docs/SECURITY.md), where Postgres
			// runs it; nothing after it can be compared.
			t.Skip("a procedure in the middle of a batch, refused by design")
		}
	}
	return true
}

// sessionGoroutines dumps the goroutines that run pgtoken's session code.
func sessionGoroutines() string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "pgtoken/session.") || strings.Contains(g, "pgtoken/session/pool.") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// describeMsg renders a message for a failure's list of steps.
func describeMsg(m pgproto3.FrontendMessage) string {
	switch m := m.(type) {
	case *pgproto3.Query:
		return fmt.Sprintf("Query(%q)", m.String)
	case *pgproto3.Parse:
		return fmt.Sprintf("Parse(%q, %q)", m.Name, m.Query)
	case *pgproto3.Bind:
		return fmt.Sprintf("Bind(%q→%q)", m.PreparedStatement, m.DestinationPortal)
	case *pgproto3.Execute:
		return fmt.Sprintf("Execute(%q, %d)", m.Portal, m.MaxRows)
	case *pgproto3.Describe:
		return fmt.Sprintf("Describe(%c %q)", m.ObjectType, m.Name)
	case *pgproto3.Close:
		return fmt.Sprintf("Close(%c %q)", m.ObjectType, m.Name)
	case *pgproto3.FunctionCall:
		return "FunctionCall(lo_creat)"
	}
	return strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3.")
}

// Seeds, written with fz: fz(client, msgs...) is a step.

// st returns the alphabet index of a statement.
func st(name string) int {
	for i, s := range fuzzStatements {
		if s.name == name {
			return i
		}
	}
	panic("no fuzz statement " + name)
}

func fz(client int, msgs ...[]fuzzMsg) fuzzStep {
	s := fuzzStep{client: client}
	for _, m := range msgs {
		s.msgs = append(s.msgs, m...)
	}
	return s
}

func fq(names ...string) []fuzzMsg {
	m := fuzzMsg{typ: 'Q'}
	for _, n := range names {
		m.stmts = append(m.stmts, st(n))
	}
	return []fuzzMsg{m}
}

func fp(name, stmt string) []fuzzMsg {
	return []fuzzMsg{{typ: 'P', name: name, stmts: []int{st(stmt)}}}
}
func fb(name, portal string) []fuzzMsg {
	return []fuzzMsg{{typ: 'B', name: name, portal: portal}}
}
func fe(portal string, maxRows uint32) []fuzzMsg {
	return []fuzzMsg{{typ: 'E', name: portal, maxRows: maxRows}}
}
func fpbe(stmt string) []fuzzMsg { return append(append(fp("", stmt), fb("", "")...), fe("", 0)...) }

var (
	fS = []fuzzMsg{{typ: 'S'}}
	fH = []fuzzMsg{{typ: 'H'}}
	fF = []fuzzMsg{{typ: 'F'}}
)

var fuzzSeeds = [][]fuzzStep{
	{fz(0, fq("who")), fz(1, fq("who")), fz(0, fq("begin", "who")), fz(0, fq("commit")), fz(1, fq("who", "commit", "who"))},
	{fz(0, fpbe("who"), fS), fz(1, fp("s0", "who"), fb("s0", ""), fe("", 0), fS), fz(0, fb("", ""), fe("", 0), fS), fz(1, fb("s0", "p"), fe("p", 0), fS)},
	{fz(0, fq("begin"), fpbe("who"), fS), fz(1, fq("who")), fz(0, fpbe("commit"), fpbe("who"), fS), fz(1, fpbe("who"), fS)},
	{fz(0, fq("begin"), fq("savepoint"), fq("div0")), fz(0, fq("rollback-to", "who")), fz(0, fq("commit-chain", "who")), fz(1, fq("who")), fz(0, fq("rollback"))},
	{fz(0, fpbe("begin"), fpbe("who"), fpbe("commit-chain"), fpbe("who"), fpbe("rollback-chain"), fpbe("who"), fpbe("rollback"), fS), fz(1, fq("who"))},
	{fz(0, fq("set"), fq("show")), fz(1, fq("show"), fq("set-config")), fz(0, fq("show"), fq("set-local", "show")), fz(1, fq("show"))},
	{fz(0, fq("timeout")), fz(1, fq("show-timeout")), fz(0, fq("show-timeout"))},
	{fz(0, fpbe("who"), fF, fpbe("who"), fS), fz(1, fF, fq("who"))},
	// A CALL on a connection that served another client (an earlier
	// seed's): fails, TestPortalsOnConnectionOfAnotherClient.
	{fz(0, fpbe("call"), fpbe("who"), fS), fz(1, fpbe("who"), fS), fz(0, fq("who"))},
	{fz(0, fp("", "series"), fb("", ""), fe("", 1), fH), fz(0, fe("", 1), fS), fz(1, fq("who"))},
	{fz(0, fpbe("big")), fz(0, fS), fz(1, fpbe("big"), fH), fz(1, fS)},
	{fz(0, fpbe("who"), fq("who"), fpbe("who"), fS), fz(1, fpbe("div0"), fq("who"), fF, fS, fq("who"))},
	{fz(0, fq("vacuum")), fz(1, fq("who")), fz(0, fq("prepare-tx", "who")), fz(1, fq("begin", "prepare-tx"))},
	// Defects found: a batch whose error comes before its Sync; the
	// unnamed portal after its transaction; an empty Query in a batch; a
	// procedure that commits, called in a simple Query.
	{fz(0, fpbe("div0"), fH), fz(0, fS, fpbe("who"), fS), fz(1, fq("who"))},
	{fz(0, fp("", "who"), fb("", ""), fS), fz(0, fe("", 0), fS)},
	{fz(0, fpbe("who"), fq("empty"), fe("", 0), fS)},
	{fz(0, fq("call")), fz(1, fq("who"))},
}
