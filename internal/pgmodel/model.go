// Package pgmodel is a small, exact model of PostgreSQL 15's protocol and
// transaction behaviour, served over TCP as a fake upstream for pgtoken's
// tests. It runs in-process, so tests that use it need no Postgres and run
// in milliseconds.
//
// What it models exactly (each point checked against a real Postgres 15 by
// TestModelMatchesPostgres and the scenarios):
//
//   - the simple Query: the statements of one Query form an implicit
//     transaction block; a syntax error anywhere fails the whole string
//     before anything runs; COMMIT/ROLLBACK in the middle end the block
//     and what follows runs in a new transaction;
//   - the extended protocol: everything up to Sync is one transaction
//     unless a transaction statement ends it; after an error every message
//     is ignored until Sync — a Query or FunctionCall too, which then gets
//     no answer at all; a Query or FunctionCall in the middle of a batch
//     runs in the batch's transaction and commits it; output is buffered
//     as Postgres buffers it (8 kB, flushed at ReadyForQuery, Flush, errors
//     and notices), so a partly flushed message is possible;
//   - transaction blocks as xact.c keeps them (idle, started, implicit,
//     in progress, failed, savepoints), with BEGIN, COMMIT, END, ROLLBACK,
//     ABORT [AND CHAIN], PREPARE TRANSACTION (disabled, as with Postgres's
//     default max_prepared_transactions = 0), SAVEPOINT, RELEASE and
//     ROLLBACK TO, and their warnings and errors;
//   - settings as guc.c keeps them: SET, SET LOCAL, RESET, RESET ALL and
//     set_config for the role and for placeholder settings (jwt.claims.*),
//     local values ending with the transaction, session values rolling
//     back with it;
//   - named and unnamed statements and portals, their lifetimes and errors;
//   - a procedure that commits inside (CALL commit_inside(), as created by
//     testdata/sql/schema.sql), VACUUM (which refuses transaction blocks
//     and pipelines), COPY to and from the table notes, large-object
//     function calls (lo_creat, lo_unlink), and statements that fail
//     (1/0 when planned, an unknown setting when run).
//
// The SQL it understands is a small subset (see parse.go); anything else
// is a syntax error, so a scenario that strays outside the model fails
// its comparison with Postgres rather than passing by accident.
//
// For every statement it runs the model keeps a Record: which identity
// (role and jwt.claims.* settings) was in force. Statements pgtoken sends
// on its own account are recognised by their shape (own.go) and marked,
// so a test can assert that no client statement ever ran without the
// client's identity.
package pgmodel

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// LoginRole is the role pgtoken logs in as; TokenRoles are the roles it
// may SET ROLE to (as granted in testdata/sql/schema.sql).
const LoginRole = "authenticator"

// TokenRoles are the roles the login role is a member of.
var TokenRoles = []string{"web_anon", "web_user", "web_admin"}

// knownRoles are the roles that exist; nopriv exists but is not granted.
var knownRoles = map[string]bool{"authenticator": true, "web_anon": true, "web_user": true, "web_admin": true, "nopriv": true}

// Error is an ErrorResponse (or a notice) the model sends.
type Error struct {
	Severity string // "" means ERROR
	Code     string
	Message  string
	Detail   string
	Hint     string
	Position int
}

func (e *Error) Error() string { return e.Code + " " + e.Message }

// Record is what the model saw when it ran (or planned) one statement.
type Record struct {
	PID int32 // the backend
	// Via says how it ran: "query" (a statement of a simple Query),
	// "parse", "bind", "describe", "execute", "fastpath" (a
	// FunctionCall), "procedure" (a statement inside a procedure, after
	// its COMMIT).
	Via string
	SQL string // the statement's text ("lo_creat" and the like for fastpath)
	Src string // SQL with the comments that follow it (a test's tag)
	// Stmt is the name of the prepared statement, for the extended
	// protocol.
	Stmt string
	// Own: the statement is pgtoken's (prelude, reset, settings read-back,
	// login queries), not the client's.
	Own bool
	// Control: a transaction-control statement (BEGIN, COMMIT, ROLLBACK,
	// SAVEPOINT, ...): it reads no data and runs no code.
	Control bool
	// The identity in force: the current role and every non-empty
	// jwt.claims.* setting.
	Role   string
	Claims map[string]string
	Status byte // the transaction status at the time ('I', 'T', 'E')
}

// Identity is a role with its claims (jwt.claims.<name> → value).
type Identity struct {
	Role   string
	Claims map[string]string
}

// Has reports whether r ran with exactly this identity in force.
func (r Record) Has(id Identity) bool {
	if r.Role != id.Role || len(r.Claims) != len(id.Claims) {
		return false
	}
	for k, v := range id.Claims {
		if r.Claims[k] != v {
			return false
		}
	}
	return true
}

func (r Record) String() string {
	who := r.Role
	keys := make([]string, 0, len(r.Claims))
	for k := range r.Claims {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		who += " " + strings.TrimPrefix(k, "jwt.claims.") + "=" + r.Claims[k]
	}
	tag := ""
	switch {
	case r.Own:
		tag = " (pgtoken's)"
	case r.Control:
		tag = " (control)"
	}
	stmt := ""
	if r.Stmt != "" {
		stmt = " [" + r.Stmt + "]"
	}
	return fmt.Sprintf("pid %d %s %c%s %q as %s%s", r.PID, r.Via, r.Status, stmt, r.SQL, who, tag)
}

// Server is a running model: a listener, its backends and the data they
// share.
type Server struct {
	ln net.Listener
	wg sync.WaitGroup

	// TraceMessages puts every message a backend reads into the log (Log),
	// for finding out what a client sent. Set it before clients connect.
	TraceMessages bool

	mu      sync.Mutex
	records []Record
	events  []string // the last backend starts and ends (Log)
	conns   map[net.Conn]bool
	closed  bool
	nextPID int32
	data    *data
	// progress is signalled when a backend starts or stops waiting for
	// input (see Quiesce).
	progress *sync.Cond
	backends map[int32]*progress
}

// Start listens on a loopback port and serves until Close.
func Start() (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, conns: map[net.Conn]bool{}, nextPID: 1000, data: newData(),
		backends: map[int32]*progress{}}
	s.progress = sync.NewCond(&s.mu)
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Addr is the address the model listens on.
func (s *Server) Addr() *net.TCPAddr { return s.ln.Addr().(*net.TCPAddr) }

// DSN is a connection string for the login role to database app.
func (s *Server) DSN() string {
	return "host=127.0.0.1 port=" + strconv.Itoa(s.Addr().Port) + " user=" + LoginRole + " password=secret dbname=app sslmode=disable"
}

// Close stops the listener, closes every backend and waits for them.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	_ = s.ln.Close()
	s.wg.Wait()
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = nc.Close()
			return
		}
		s.conns[nc] = true
		s.nextPID++
		pid := s.nextPID
		s.backends[pid] = &progress{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				_ = nc.Close()
				s.mu.Lock()
				delete(s.conns, nc)
				delete(s.backends, pid)
				s.progress.Broadcast()
				s.mu.Unlock()
			}()
			b := newBackend(s, nc, pid)
			s.event("backend %d: connection from %s", pid, nc.RemoteAddr())
			s.event("backend %d: ended: %s", pid, b.serve())
		}()
	}
}

// event keeps a line of the model's log.
func (s *Server) event(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, fmt.Sprintf(format, args...))
	if len(s.events) > 200 {
		s.events = append(s.events[:0], s.events[100:]...)
	}
}

// Log returns the model's last log lines: which backends started and why
// each ended.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.events, "\n")
}

// Records returns everything recorded so far.
func (s *Server) Records() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Record(nil), s.records...)
}

// TakeRecords returns the records since the last call and forgets them.
func (s *Server) TakeRecords() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.records
	s.records = nil
	return r
}

func (s *Server) record(r Record) {
	s.mu.Lock()
	s.records = append(s.records, r)
	s.mu.Unlock()
}

// progress is how far a backend has read its input, and what it had
// answered when it last waited for more.
type progress struct {
	waiting  bool  // blocked reading, with nothing unread in its buffer
	consumed int64 // bytes of input processed
	state    BackendState
}

// BackendState is what a backend reports when it waits for input.
type BackendState struct {
	// Owed counts the messages the client is owed: every message sent up
	// to the last ReadyForQuery, Flush, error or notice (what Postgres
	// flushes because the client asked, or at once), startup messages
	// included.
	Owed int
	// Status is the transaction status ReadyForQuery would report now.
	Status byte
	// Open: a batch is in progress (an implicit transaction not yet ended
	// by Sync, or messages being skipped until Sync).
	Open bool
}

// BackendInfo is where one backend stands.
type BackendInfo struct {
	PID     int32
	Waiting bool // blocked reading, everything it was sent processed
	State   BackendState
}

// Backends lists the backends, by pid.
func (s *Server) Backends() []BackendInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]BackendInfo, 0, len(s.backends))
	for pid, p := range s.backends {
		out = append(out, BackendInfo{PID: pid, Waiting: p.waiting, State: p.state})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

// Describe lists the backends and where each stands, for tests that need
// to say where something is stuck.
func (s *Server) Describe() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	pids := make([]int, 0, len(s.backends))
	for pid := range s.backends {
		pids = append(pids, int(pid))
	}
	sort.Ints(pids)
	var b strings.Builder
	for _, pid := range pids {
		p := s.backends[int32(pid)]
		fmt.Fprintf(&b, "backend %d: waiting for input %v, read %d bytes, status %c, batch open %v, owed %d\n",
			pid, p.waiting, p.consumed, p.state.Status, p.state.Open, p.state.Owed)
	}
	return b.String()
}

// setIdle notes that a backend processed consumed bytes and waits for
// more.
func (s *Server) setIdle(pid int32, consumed int64, st BackendState) {
	s.mu.Lock()
	if p := s.backends[pid]; p != nil {
		p.waiting, p.consumed, p.state = true, consumed, st
	}
	s.progress.Broadcast()
	s.mu.Unlock()
}

// setBusy notes that a backend got input to work on.
func (s *Server) setBusy(pid int32) {
	s.mu.Lock()
	if p := s.backends[pid]; p != nil {
		p.waiting = false
	}
	s.mu.Unlock()
}

// Quiesce waits until backend pid has processed the first sent bytes of
// its input (its startup packet included) and waits for more, and returns
// its state then; ok is false when the backend is gone. The caller must
// have written those bytes before it asks.
func (s *Server) Quiesce(pid int32, sent int64) (st BackendState, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		p := s.backends[pid]
		switch {
		case p == nil:
			return BackendState{}, false
		case p.waiting && p.consumed >= sent:
			return p.state, true
		}
		s.progress.Wait()
	}
}

// data is the database's content, shared by the backends: the table
// notes and the large objects. Writes of a transaction are kept by its
// backend and added here at commit.
type data struct {
	mu      sync.Mutex
	notes   []note
	noteSeq int64
	loSeq   uint32
	los     map[uint32]bool
}

type note struct {
	id          int64
	owner, body *string
}

func newData() *data { return &data{loSeq: 16384, los: map[uint32]bool{}} }

func (d *data) nextNoteID() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.noteSeq++
	return d.noteSeq
}

func (d *data) committedNotes() []note {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]note(nil), d.notes...)
}

func (d *data) commitNotes(n []note) {
	d.mu.Lock()
	d.notes = append(d.notes, n...)
	d.mu.Unlock()
}
