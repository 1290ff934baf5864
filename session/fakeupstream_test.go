package session_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// fakeUpstream is a scripted stand-in for Postgres, for failures whose
// timing a real server cannot be made to hit every time: it answers like
// Postgres would (trust login, every statement succeeds, a select returns
// one row), and on a marker in the query text it dies the way it is told.
type fakeUpstream struct {
	t  *testing.T
	ln net.Listener
	// die decides, for a Query's or Parse's text, whether the server
	// terminates the connection: "after" (Query only) sends the answers
	// and ReadyForQuery and then FATAL 57P01 in the same write; "instead"
	// sends FATAL 57P01 in place of any answer; "later" (Query only) does
	// that after 300ms. "" answers normally.
	die func(typ byte, sql string) string
	wg  sync.WaitGroup
}

func startFakeUpstream(t *testing.T, die func(typ byte, sql string) string) *fakeUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeUpstream{t: t, ln: ln, die: die}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer nc.Close()
				f.serve(nc)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *fakeUpstream) addr() *net.TCPAddr { return f.ln.Addr().(*net.TCPAddr) }

// env starts pgtoken in front of the fake upstream.
func (f *fakeUpstream) env(t *testing.T, mutate func(*config.Config)) *pgtest.Env {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = "host=127.0.0.1 port=" + itoa(f.addr().Port) + " user=authenticator password=secret dbname=app sslmode=disable"
	cfg.Pool.Size = 1
	cfg.Pool.WaitTimeout = config.Duration(5 * time.Second)
	cfg.JWT.Secret = pgtest.Secret
	cfg.JWT.AllowedRoles = config.StringList{"web_anon", "web_user", "web_admin"}
	if mutate != nil {
		mutate(&cfg)
	}
	return pgtest.StartWith(t, nil, "app", cfg)
}

func (f *fakeUpstream) serve(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	be := pgproto3.NewBackend(nc, nc)
	if _, err := be.ReceiveStartupMessage(); err != nil {
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	for _, p := range [][2]string{{"server_version", "17.0"}, {"server_encoding", "UTF8"}, {"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"}, {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"},
		{"session_authorization", "authenticator"}} {
		be.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: 4242, SecretKey: []byte{1, 2, 3, 4}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	status := byte('I')
	fatal := &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			how := f.die('Q', m.String)
			if how == "later" {
				time.Sleep(300 * time.Millisecond)
				how = "instead"
			}
			if how == "instead" {
				be.Send(fatal)
				_ = be.Flush()
				return
			}
			if strings.HasPrefix(m.String, "/* pgtoken lock-down checks */") {
				// A locked-down database: the login, NOINHERIT, and
				// nothing else.
				cols := make([]pgproto3.FieldDescription, 6)
				for i := range cols {
					cols[i] = pgproto3.FieldDescription{Name: []byte("c"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
				}
				be.Send(&pgproto3.RowDescription{Fields: cols})
				for _, row := range [][]string{{"login", "authenticator", "app", "postgres", "", ""}, {"role", "authenticator", "", "", "", ""}} {
					vals := make([][]byte, len(row))
					for i, v := range row {
						vals[i] = []byte(v)
					}
					be.Send(&pgproto3.DataRow{Values: vals})
				}
				be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 2")})
				be.Send(&pgproto3.ReadyForQuery{TxStatus: status})
				if be.Flush() != nil {
					return
				}
				continue
			}
			for _, st := range strings.Split(m.String, ";") {
				st = strings.ToLower(strings.TrimSpace(st))
				switch {
				case st == "":
				case strings.HasPrefix(st, "select"):
					be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}})
					be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte("x")}})
					be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
				default:
					word, _, _ := strings.Cut(st, " ")
					switch word {
					case "begin":
						status = 'T'
					case "commit", "rollback":
						status = 'I'
					}
					be.Send(&pgproto3.CommandComplete{CommandTag: []byte(strings.ToUpper(word))})
				}
			}
			be.Send(&pgproto3.ReadyForQuery{TxStatus: status})
			if how == "after" {
				be.Send(fatal)
				_ = be.Flush()
				return
			}
		case *pgproto3.Parse:
			if f.die('P', m.Query) == "instead" {
				be.Send(fatal)
				_ = be.Flush()
				return
			}
			be.Send(&pgproto3.ParseComplete{})
		case *pgproto3.Bind:
			be.Send(&pgproto3.BindComplete{})
		case *pgproto3.Describe:
			if m.ObjectType == 'S' {
				be.Send(&pgproto3.ParameterDescription{})
			}
			be.Send(&pgproto3.NoData{})
		case *pgproto3.Execute:
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 0")})
		case *pgproto3.Close:
			be.Send(&pgproto3.CloseComplete{})
		case *pgproto3.Sync:
			be.Send(&pgproto3.ReadyForQuery{TxStatus: status})
		case *pgproto3.Terminate:
			return
		}
		if be.Flush() != nil {
			return
		}
	}
}

// TestAnswerBeforeServerTerminationReachesTheClient: the server's last
// answer and its FATAL arrive in one read. The answer ends the client's
// transaction (the connection goes back to the pool) while the FATAL is
// still buffered; the client must still get its answer.
func TestAnswerBeforeServerTerminationReachesTheClient(t *testing.T) {
	checkLeaks(t)
	f := startFakeUpstream(t, func(_ byte, sql string) string {
		if strings.Contains(sql, "die after") {
			return "after"
		}
		return ""
	})
	env := f.env(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	for i := range 3 {
		cx, cancel := ctxTimeout(3 * time.Second)
		_, err := a.Exec(cx, "select 'die after'").ReadAll()
		cancel()
		if err != nil {
			t.Fatalf("round %d: the answer sent before the server closed the connection never came: %v", i, err)
		}
	}
}

// TestServerLostDuringUpkeep: the server connection breaks while pgtoken's
// own ROLLBACK runs on it for a client that left inside a transaction.
// pgtoken must drop the connection and go on (it crashed).
func TestServerLostDuringUpkeep(t *testing.T) {
	checkLeaks(t)
	f := startFakeUpstream(t, func(_ byte, sql string) string {
		if strings.EqualFold(strings.TrimSpace(sql), "rollback") {
			return "instead"
		}
		return ""
	})
	env := f.env(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, a, "begin")
	_ = a.Conn().Close() // leaves inside the transaction: pgtoken rolls back
	time.Sleep(200 * time.Millisecond)
	b := env.Connect(pgtest.UserToken(t, "bob"))
	if got := rows(t, b, "select 1"); len(got) != 1 {
		t.Fatalf("after the upkeep failed: %q", got)
	}
}

// TestPreparedStatementSurvivesConnectionLossWhileReparsed: a statement
// the client prepared while the pool was busy (answered by pgtoken, parsed
// on the server at first use) is parsed again on every new server
// connection. If the connection breaks during such a re-parse, the client
// gets an error for that use; the statement itself must not be forgotten.
func TestPreparedStatementSurvivesConnectionLossWhileReparsed(t *testing.T) {
	checkLeaks(t)
	var parses atomic.Int64
	f := startFakeUpstream(t, func(typ byte, sql string) string {
		switch {
		case typ == 'P' && strings.Contains(sql, "marker") && parses.Add(1) == 2:
			return "instead" // the second parse of the statement
		case typ == 'Q' && strings.Contains(sql, "die after"):
			return "after"
		}
		return ""
	})
	env := f.env(t, nil)
	holder := env.Connect(pgtest.UserToken(t, "holder"))
	a := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, holder, "begin") // the pool's only connection is busy
	prepared := make(chan error, 1)
	go func() {
		_, err := a.Prepare(context.Background(), "iso", "select 'marker'", nil)
		prepared <- err
	}()
	time.Sleep(200 * time.Millisecond)
	rows(t, holder, "commit")
	if err := <-prepared; err != nil {
		t.Fatal(err)
	}
	exec := func() error {
		cx, cancel := ctxTimeout(5 * time.Second)
		defer cancel()
		return a.ExecPrepared(cx, "iso", nil, nil, nil).Read().Err
	}
	if err := exec(); err != nil {
		t.Fatalf("first use: %v", err)
	}
	// A new server connection: the statement is parsed again there, and
	// the connection breaks during that parse.
	rows(t, a, "select 'die after'")
	if err := exec(); pgErr(err) == nil || pgErr(err).Code != "08006" {
		t.Fatalf("use while the connection breaks: %v", err)
	}
	if err := exec(); err != nil {
		t.Fatalf("the statement was forgotten after a connection loss: %v", err)
	}
}

// TestServerLostDuringIdentityReset: after a statement that cannot run in a
// transaction block, pgtoken resets the identity it set for the session;
// the client's next query waits behind that reset. If the connection
// breaks during the reset, that query must still get an answer.
func TestServerLostDuringIdentityReset(t *testing.T) {
	checkLeaks(t)
	f := startFakeUpstream(t, func(typ byte, sql string) string {
		if typ == 'Q' && strings.HasPrefix(sql, "RESET ROLE") {
			return "later"
		}
		return ""
	})
	env := f.env(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	rows(t, a, "vacuum notes")
	cx, cancel := ctxTimeout(3 * time.Second)
	defer cancel()
	_, err := a.Exec(cx, "select 1").ReadAll()
	if pe := pgErr(err); pe == nil || pe.Code != "08006" {
		t.Fatalf("the query behind the reset: %v", err)
	}
	if got := rows(t, a, "select 1"); len(got) != 1 {
		t.Fatalf("afterwards: %q", got)
	}
}

// TestServerLostBeforeStatementOutsideTransaction: for a statement that
// cannot run in a transaction block, pgtoken first sets the identity for
// the session and waits for that; if the connection breaks right after
// (nothing of the client's is in flight), the client must still get an
// answer for its statement.
func TestServerLostBeforeStatementOutsideTransaction(t *testing.T) {
	checkLeaks(t)
	f := startFakeUpstream(t, func(typ byte, sql string) string {
		if typ == 'Q' && strings.HasPrefix(sql, "SET ROLE") {
			return "after" // the identity is set, then the server goes
		}
		return ""
	})
	env := f.env(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	cx, cancel := ctxTimeout(3 * time.Second)
	defer cancel()
	_, err := a.Exec(cx, "vacuum notes").ReadAll()
	if pe := pgErr(err); pe == nil || pe.Code != "08006" {
		t.Fatalf("vacuum on a connection lost before it was sent: %v", err)
	}
	if got := rows(t, a, "select 1"); len(got) != 1 {
		t.Fatalf("afterwards: %q", got)
	}
}
