package pgmodel

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"
)

// sendBufSize is Postgres's send buffer (PQ_SEND_BUFFER_SIZE): output
// waits in it until ReadyForQuery, Flush, an error or notice, or until it
// is full — then exactly its size goes out, which may end in the middle
// of a message.
const sendBufSize = 8192

// backend is one server connection: PostgresMain.
type backend struct {
	srv *Server
	pid int32
	nc  net.Conn
	r   *bufio.Reader

	out      []byte
	werr     error
	consumed int64 // bytes of input processed
	sent     int   // messages sent
	owed     int   // messages sent before the last ReadyForQuery or Flush

	g             *gucs
	xs            []*xstate
	xactStarted   bool // xact_started
	ignore        bool // ignore_till_sync
	doingExtended bool // doing_extended_query_message
	snapshot      bool // the transaction took a snapshot (FirstSnapshotSet)
	pipelining    bool // XACT_FLAGS_PIPELINING
	needCommit    bool // XACT_FLAGS_NEEDIMMEDIATECOMMIT
	iso           string
	notes         []note // the transaction's writes

	stmts   map[string]*prepared
	unnamed *prepared
	portals map[string]*portal
	active  *portal // the portal running now (kept when a procedure commits)
}

// prepared is a prepared statement (named, or the unnamed one).
type prepared struct {
	name     string
	st       *stmt // nil: the empty query
	params   []ty
	cols     []string
	colTypes []ty
}

// portal is a bound statement.
type portal struct {
	name   string
	ps     *prepared
	params []value
	level  int // the transaction level that created it (0: top)
	ran    bool
	done   bool // ran to completion and cannot run again
	rows   [][]value
	pos    int
	tag    string // a utility statement's tag
}

func newBackend(s *Server, nc net.Conn, pid int32) *backend {
	return &backend{srv: s, pid: pid, nc: nc, r: bufio.NewReaderSize(nc, 8192), g: newGucs(),
		xs: []*xstate{{}}, iso: "read committed", stmts: map[string]*prepared{}, portals: map[string]*portal{}}
}

// send queues a message, flushing whenever the buffer fills.
func (b *backend) send(m pgproto3.BackendMessage) {
	var err error
	b.out, err = m.Encode(b.out)
	if err != nil {
		panic(fmt.Sprintf("pgmodel: encoding %T: %v", m, err))
	}
	b.sent++
	for len(b.out) >= sendBufSize {
		b.write(b.out[:sendBufSize])
		b.out = append(b.out[:0], b.out[sendBufSize:]...)
	}
}

func (b *backend) flush() {
	if len(b.out) > 0 {
		b.write(b.out)
		b.out = b.out[:0]
	}
}

func (b *backend) write(p []byte) {
	if b.werr != nil {
		return
	}
	_, b.werr = b.nc.Write(p)
}

// notice sends a warning (flushed at once, as Postgres does).
func (b *backend) notice(e *Error) {
	sev := e.Severity
	if sev == "" {
		sev = "NOTICE"
	}
	b.send(&pgproto3.NoticeResponse{Severity: sev, SeverityUnlocalized: sev, Code: e.Code, Message: e.Message,
		Detail: e.Detail, Hint: e.Hint, Position: int32(e.Position)})
	b.flush()
	b.owed = b.sent
}

func (b *backend) sendError(e *Error) {
	sev := e.Severity
	if sev == "" {
		sev = "ERROR"
	}
	b.send(&pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: e.Code, Message: e.Message,
		Detail: e.Detail, Hint: e.Hint, Position: int32(e.Position)})
	b.flush()
	b.owed = b.sent
}

func (b *backend) readyForQuery() {
	b.send(&pgproto3.ReadyForQuery{TxStatus: b.status()})
	b.flush()
	b.owed = b.sent
}

// read reads one message: its type and body. Before it blocks on the
// network it tells the server it is idle.
func (b *backend) read() (byte, []byte, error) {
	if b.r.Buffered() == 0 {
		b.srv.setIdle(b.pid, b.consumed, BackendState{Owed: b.owed, Status: b.status(), Open: b.xactStarted || b.ignore})
	}
	var head [5]byte
	if _, err := io.ReadFull(b.r, head[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(head[1:])) - 4
	if n < 0 || n > 1<<30 {
		return 0, nil, fmt.Errorf("bad message length %d", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(b.r, body); err != nil {
		return 0, nil, err
	}
	b.srv.setBusy(b.pid)
	b.consumed += int64(5 + n)
	if b.srv.TraceMessages {
		b.srv.event("backend %d: read %c %q", b.pid, head[0], truncate(body, 60))
	}
	return head[0], body, nil
}

// startup reads the startup packet (answering SSL and GSS requests with
// N) and logs in with trust.
func (b *backend) startup() bool {
	for {
		var head [4]byte
		if _, err := io.ReadFull(b.r, head[:]); err != nil {
			return false
		}
		n := int(binary.BigEndian.Uint32(head[:])) - 4
		if n < 4 || n > 10000 {
			return false
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(b.r, body); err != nil {
			return false
		}
		b.consumed += int64(4 + n)
		switch code := binary.BigEndian.Uint32(body); code {
		case 80877103, 80877104: // SSLRequest, GSSENCRequest
			b.write([]byte{'N'})
			continue
		case 80877102: // CancelRequest: the model runs nothing long enough
			return false
		case 196608:
		default:
			return false
		}
		break
	}
	b.send(&pgproto3.AuthenticationOk{})
	for _, p := range [][2]string{{"application_name", ""}, {"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"},
		{"default_transaction_read_only", "off"}, {"in_hot_standby", "off"}, {"integer_datetimes", "on"},
		{"IntervalStyle", "postgres"}, {"is_superuser", "off"}, {"server_encoding", "UTF8"},
		{"server_version", "15.0 (pgmodel)"}, {"session_authorization", LoginRole},
		{"standard_conforming_strings", "on"}, {"TimeZone", "UTC"}} {
		b.send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	b.send(&pgproto3.BackendKeyData{ProcessID: uint32(b.pid), SecretKey: []byte{0, 0, 0, 1}})
	return true
}

// serve is the backend's main loop; it returns why it ended.
func (b *backend) serve() string {
	if !b.startup() {
		return "no startup packet (or a cancel request)"
	}
	sendReady := true
	for b.werr == nil {
		if sendReady {
			b.readyForQuery()
			sendReady = false
		}
		typ, body, err := b.read()
		if err != nil {
			return "reading: " + err.Error()
		}
		switch typ {
		case 'P', 'B', 'C', 'D', 'E', 'H':
			b.doingExtended = true
		case 'S':
			b.ignore = false
			b.doingExtended = false
		default:
			b.doingExtended = false
		}
		if typ == 'X' {
			return "Terminate"
		}
		if b.ignore {
			continue
		}
		perr, fatal := b.dispatch(typ, body, &sendReady)
		if fatal {
			b.flush()
			return fmt.Sprintf("fatal error after a %q message", typ)
		}
		if perr != nil {
			b.sendError(perr)
			b.abortCurrent()
			b.xactStarted = false
			b.active = nil
			if b.doingExtended {
				b.ignore = true
			} else {
				sendReady = true
			}
		}
	}
	return "writing: " + b.werr.Error()
}

// dispatch handles one message; fatal ends the connection.
func (b *backend) dispatch(typ byte, body []byte, sendReady *bool) (_ *Error, fatal bool) {
	switch typ {
	case 'Q':
		var m pgproto3.Query
		if err := m.Decode(body); err != nil {
			return b.protocolViolation(err), true
		}
		*sendReady = true
		return b.query(m.String)
	case 'P':
		var m pgproto3.Parse
		if err := m.Decode(body); err != nil {
			return b.protocolViolation(err), true
		}
		return b.parse(&m), false
	case 'B':
		var m pgproto3.Bind
		if err := m.Decode(body); err != nil {
			return b.protocolViolation(err), true
		}
		return b.bind(&m), false
	case 'D':
		var m pgproto3.Describe
		if err := m.Decode(body); err != nil {
			return b.protocolViolation(err), true
		}
		return b.describe(&m), false
	case 'E':
		var m pgproto3.Execute
		if err := m.Decode(body); err != nil {
			return b.protocolViolation(err), true
		}
		return b.execute(string(m.Portal), int(m.MaxRows)), false
	case 'C':
		var m pgproto3.Close
		if err := m.Decode(body); err != nil {
			return b.protocolViolation(err), true
		}
		b.close(&m)
		return nil, false
	case 'H':
		b.flush()
		b.owed = b.sent
		return nil, false
	case 'S':
		*sendReady = true
		return b.finishCommand(), false
	case 'F':
		var m pgproto3.FunctionCall
		if err := m.Decode(body); err != nil {
			return b.protocolViolation(err), true
		}
		*sendReady = true
		return b.functionCall(&m), false
	case 'd', 'c', 'f':
		// Outside COPY: ignored, as the protocol says.
		return nil, false
	}
	b.sendError(&Error{Severity: "FATAL", Code: "08P01", Message: "invalid frontend message type " + strconv.Itoa(int(typ))})
	return nil, true
}

func (b *backend) protocolViolation(err error) *Error {
	e := &Error{Severity: "FATAL", Code: "08P01", Message: "invalid message format: " + err.Error()}
	b.sendError(e)
	return nil
}

func errAborted() *Error {
	return &Error{Code: "25P02", Message: "current transaction is aborted, commands ignored until end of transaction block"}
}

// query is exec_simple_query. A fatal result ends the connection (a
// protocol violation during COPY).
func (b *backend) query(sql string) (*Error, bool) {
	b.startCommand()
	b.unnamed = nil
	toks, lerr := lex(sql)
	if lerr != nil {
		return lerr, false
	}
	texts := split(sql, toks)
	stmts := make([]*stmt, len(texts))
	for i, t := range texts {
		s, err := parseStmt(t)
		if err != nil {
			return err, false
		}
		stmts[i] = s
	}
	implicit := len(stmts) > 1
	for i, s := range stmts {
		if b.abortedState() && !s.exitStmt() {
			return errAborted(), false
		}
		b.startCommand()
		if implicit {
			// After the transaction starts: what follows a COMMIT in
			// the string is in an implicit block again.
			b.beginImplicit()
		}
		delete(b.portals, "")
		tag, err, fatal := b.runSimple(s)
		if fatal || err != nil {
			return err, fatal
		}
		if i == len(stmts)-1 {
			if implicit {
				b.endImplicit()
			}
			if err := b.finishCommand(); err != nil {
				return err, false
			}
		} else if s.transactionStmt() {
			if err := b.finishCommand(); err != nil {
				return err, false
			}
		}
		b.send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
	}
	if err := b.finishCommand(); err != nil {
		return err, false
	}
	if len(stmts) == 0 {
		b.send(&pgproto3.EmptyQueryResponse{})
	}
	return nil, false
}

// parse is exec_parse_message.
func (b *backend) parse(m *pgproto3.Parse) *Error {
	b.startCommand()
	name := m.Name
	if name == "" {
		b.unnamed = nil
	}
	toks, err := lex(m.Query)
	if err != nil {
		return err
	}
	texts := split(m.Query, toks)
	if len(texts) > 1 {
		return &Error{Code: "42601", Message: "cannot insert multiple commands into a prepared statement"}
	}
	ps := &prepared{name: name}
	if len(texts) == 1 {
		s, err := parseStmt(texts[0])
		if err != nil {
			return err
		}
		ps.st = s
	}
	if b.abortedState() && (ps.st == nil || !ps.st.exitStmt()) {
		return errAborted()
	}
	if ps.st != nil {
		if ps.st.needsSnapshot() {
			b.snapshot = true
		}
		b.note("parse", ps.st, name)
		sc := &scope{src: m.Query}
		for _, oid := range m.ParameterOIDs {
			sc.params = append(sc.params, ty(oid))
		}
		if err := b.analyzeStmt(ps.st, sc, ps); err != nil {
			return err
		}
	}
	if name != "" {
		if _, ok := b.stmts[name]; ok {
			return &Error{Code: "42P05", Message: "prepared statement \"" + name + "\" already exists"}
		}
		b.stmts[name] = ps
	} else {
		b.unnamed = ps
	}
	b.send(&pgproto3.ParseComplete{})
	return nil
}

func (b *backend) lookupStmt(name string) (*prepared, *Error) {
	if name == "" {
		if b.unnamed == nil {
			return nil, &Error{Code: "26000", Message: "unnamed prepared statement does not exist"}
		}
		return b.unnamed, nil
	}
	if ps := b.stmts[name]; ps != nil {
		return ps, nil
	}
	return nil, &Error{Code: "26000", Message: "prepared statement \"" + name + "\" does not exist"}
}

// bind is exec_bind_message.
func (b *backend) bind(m *pgproto3.Bind) *Error {
	b.startCommand()
	ps, err := b.lookupStmt(m.PreparedStatement)
	if err != nil {
		return err
	}
	if len(m.Parameters) != len(ps.params) {
		return &Error{Code: "08P01", Message: fmt.Sprintf("bind message supplies %d parameters, but prepared statement \"%s\" requires %d",
			len(m.Parameters), m.PreparedStatement, len(ps.params))}
	}
	if b.abortedState() && (ps.st == nil || !ps.st.exitStmt() || len(m.Parameters) != 0) {
		return errAborted()
	}
	name := m.DestinationPortal
	if name != "" && b.portals[name] != nil {
		return &Error{Code: "42P03", Message: "cursor \"" + name + "\" already exists"}
	}
	p := &portal{name: name, ps: ps, level: len(b.xs) - 1}
	b.portals[name] = p
	if len(m.Parameters) > 0 || ps.st != nil && ps.st.needsSnapshot() {
		b.snapshot = true
	}
	for i, raw := range m.Parameters {
		format := int16(0)
		switch {
		case len(m.ParameterFormatCodes) == 1:
			format = m.ParameterFormatCodes[0]
		case len(m.ParameterFormatCodes) > i:
			format = m.ParameterFormatCodes[i]
		}
		v, err := decodeParam(raw, format, ps.params[i])
		if err != nil {
			return err
		}
		p.params = append(p.params, v)
	}
	if ps.st != nil {
		b.note("bind", ps.st, m.PreparedStatement)
		if err := b.start(ps.st, p.params); err != nil {
			return err
		}
	}
	b.send(&pgproto3.BindComplete{})
	return nil
}

// decodeParam turns a Bind parameter into a value of type t.
func decodeParam(raw []byte, format int16, t ty) (value, *Error) {
	if raw == nil {
		return null, nil
	}
	if format == 1 {
		switch {
		case t == tyInt4 && len(raw) == 4:
			return text(strconv.FormatInt(int64(int32(binary.BigEndian.Uint32(raw))), 10)), nil
		case t == tyInt8 && len(raw) == 8:
			return text(strconv.FormatInt(int64(binary.BigEndian.Uint64(raw)), 10)), nil
		case t == tyBool && len(raw) == 1:
			return boolValue(raw[0] != 0), nil
		case t == tyText:
			return text(string(raw)), nil
		}
		return null, &Error{Code: "22P03", Message: "incorrect binary data format in bind parameter 1"}
	}
	return convert(text(string(raw)), t)
}

// describe is exec_describe_statement_message and
// exec_describe_portal_message.
func (b *backend) describe(m *pgproto3.Describe) *Error {
	b.startCommand()
	if m.ObjectType == 'S' {
		ps, err := b.lookupStmt(m.Name)
		if err != nil {
			return err
		}
		if b.abortedState() && ps.st != nil && ps.st.returnsRows() {
			return errAborted()
		}
		if ps.st != nil {
			b.note("describe", ps.st, m.Name)
		}
		oids := make([]uint32, len(ps.params))
		for i, t := range ps.params {
			oids[i] = uint32(t)
		}
		b.send(&pgproto3.ParameterDescription{ParameterOIDs: oids})
		b.sendDescription(ps)
		return nil
	}
	p := b.portals[m.Name]
	if p == nil {
		return &Error{Code: "34000", Message: "portal \"" + m.Name + "\" does not exist"}
	}
	if b.abortedState() && p.ps.st != nil && p.ps.st.returnsRows() {
		return errAborted()
	}
	b.sendDescription(p.ps)
	return nil
}

// sendDescription sends RowDescription, or NoData.
func (b *backend) sendDescription(ps *prepared) {
	if ps.st == nil || !ps.st.returnsRows() {
		b.send(&pgproto3.NoData{})
		return
	}
	b.send(rowDescription(ps.cols, ps.colTypes))
}

func rowDescription(cols []string, types []ty) *pgproto3.RowDescription {
	rd := &pgproto3.RowDescription{}
	for i, c := range cols {
		size := int16(-1)
		switch types[i] {
		case tyInt4:
			size = 4
		case tyInt8:
			size = 8
		case tyBool:
			size = 1
		}
		t := types[i]
		if t == tyUnknown {
			t = tyText
		}
		rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: uint32(t), DataTypeSize: size, TypeModifier: -1})
	}
	return rd
}

// execute is exec_execute_message.
func (b *backend) execute(name string, maxRows int) *Error {
	p := b.portals[name]
	if p == nil {
		return &Error{Code: "34000", Message: "portal \"" + name + "\" does not exist"}
	}
	if p.ps.st == nil {
		b.send(&pgproto3.EmptyQueryResponse{})
		return nil
	}
	st := p.ps.st
	b.startCommand()
	if b.abortedState() && !st.exitStmt() {
		return errAborted()
	}
	if !p.ran {
		b.note("execute", st, p.ps.name)
	}
	b.active = p
	tag, suspended, err := b.runPortal(p, maxRows)
	b.active = nil
	if err != nil {
		return err
	}
	if suspended {
		b.send(&pgproto3.PortalSuspended{})
		b.pipelining = true
		return nil
	}
	if st.transactionStmt() || b.needCommit {
		if err := b.finishCommand(); err != nil {
			return err
		}
	} else {
		b.pipelining = true
	}
	b.send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
	return nil
}

// close handles Close: no transaction, no errors.
func (b *backend) close(m *pgproto3.Close) {
	switch m.ObjectType {
	case 'S':
		if m.Name == "" {
			b.unnamed = nil
		} else {
			delete(b.stmts, m.Name)
		}
	case 'P':
		delete(b.portals, m.Name)
	}
	b.send(&pgproto3.CloseComplete{})
}

// functionCall is HandleFunctionRequest: a large-object function by OID.
func (b *backend) functionCall(m *pgproto3.FunctionCall) *Error {
	b.startCommand()
	if b.abortedState() {
		return errAborted()
	}
	b.snapshot = true
	arg := func(i int) (int64, *Error) {
		if i >= len(m.Arguments) || m.Arguments[i] == nil {
			return 0, &Error{Code: "22023", Message: "pgmodel: missing argument"}
		}
		raw := m.Arguments[i]
		format := uint16(0)
		if len(m.ArgFormatCodes) == 1 {
			format = m.ArgFormatCodes[0]
		} else if len(m.ArgFormatCodes) > i {
			format = m.ArgFormatCodes[i]
		}
		if format == 1 && len(raw) == 4 {
			return int64(int32(binary.BigEndian.Uint32(raw))), nil
		}
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return 0, &Error{Code: "22P02", Message: "invalid input syntax for type integer: \"" + string(raw) + "\""}
		}
		return n, nil
	}
	var name string
	switch m.Function {
	case 957:
		name = "lo_creat"
	case 964:
		name = "lo_unlink"
	default:
		return &Error{Code: "42883", Message: fmt.Sprintf("function with OID %d does not exist", m.Function)}
	}
	b.record(Record{Via: "fastpath", SQL: name})
	var result int64
	d := b.srv.data
	switch name {
	case "lo_creat":
		if _, err := arg(0); err != nil {
			return err
		}
		d.mu.Lock()
		d.loSeq++
		result = int64(d.loSeq)
		d.los[d.loSeq] = true
		d.mu.Unlock()
	case "lo_unlink":
		n, err := arg(0)
		if err != nil {
			return err
		}
		d.mu.Lock()
		ok := d.los[uint32(n)]
		delete(d.los, uint32(n))
		d.mu.Unlock()
		if !ok {
			return &Error{Code: "42704", Message: fmt.Sprintf("large object %d does not exist", n)}
		}
		result = 1
	}
	var out []byte
	if m.ResultFormatCode == 1 {
		out = binary.BigEndian.AppendUint32(nil, uint32(result))
	} else {
		out = []byte(strconv.FormatInt(result, 10))
	}
	b.send(&pgproto3.FunctionCallResponse{Result: out})
	return b.finishCommand()
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
