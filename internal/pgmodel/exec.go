package pgmodel

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Running statements. Each goes through up to three phases, as in
// Postgres: analysis (names and types: Parse, or just before it runs in a
// simple Query), start (planning, which folds constants, and the
// executor's start, which checks privileges: Bind, or before the
// RowDescription of a simple Query), and run (Execute).

// currentUser is current_user.
func (b *backend) currentUser() string {
	if r := b.g.m["role"].cur.val; r != "none" {
		return r
	}
	return LoginRole
}

// claims are the jwt.claims.* settings in force with a value.
func (b *backend) claims() map[string]string {
	out := map[string]string{}
	for _, s := range b.g.m {
		if s.placeholder && strings.HasPrefix(s.name, "jwt.claims.") && s.cur.val != "" {
			out[s.name] = s.cur.val
		}
	}
	return out
}

func (b *backend) isTokenRole() bool {
	u := b.currentUser()
	for _, r := range TokenRoles {
		if r == u {
			return true
		}
	}
	return false
}

// record keeps a Record with the identity in force.
func (b *backend) record(r Record) {
	r.PID = b.pid
	r.Role = b.currentUser()
	r.Claims = b.claims()
	r.Status = b.status()
	b.srv.record(r)
}

// note records a statement about to be analysed, planned or run; via is
// how, stmtName the prepared statement's name (extended protocol).
func (b *backend) note(via string, s *stmt, stmtName string) {
	r := Record{Via: via, SQL: s.txt.text(), Src: s.txt.withComments(), Stmt: stmtName, Control: s.control()}
	if via == "query" {
		r.Own = ownStatement(r.SQL)
	} else {
		r.Own = ownStmtName(stmtName)
	}
	b.record(r)
}

// showSetting is SHOW and current_setting: ok is false (with the error)
// for a setting that does not exist.
func (b *backend) showSetting(name string) (string, bool, *Error) {
	if strings.EqualFold(name, "transaction_isolation") {
		return b.iso, true, nil
	}
	s, err := b.g.lookup(name, false)
	if err != nil {
		return "", false, err
	}
	return s.show(), true, nil
}

// setSetting is SET, SET LOCAL, RESET (v nil) and set_config.
func (b *backend) setSetting(name string, v *string, local bool) *Error {
	if strings.EqualFold(name, "transaction_isolation") {
		if v == nil {
			return nil
		}
		return b.setIsolation(*v)
	}
	s, err := b.g.lookup(name, true)
	if err != nil {
		return err
	}
	if v == nil {
		b.g.set(s, gucValue{val: s.boot, source: "default"}, local)
		return nil
	}
	c, err := s.canon(*v, b.canSetRole)
	if err != nil {
		return err
	}
	b.g.set(s, gucValue{val: c, source: "session"}, local)
	return nil
}

// canSetRole checks SET ROLE as the login role.
func (b *backend) canSetRole(role string) *Error {
	if !knownRoles[role] {
		return &Error{Code: "22023", Message: "role \"" + role + "\" does not exist"}
	}
	if role == LoginRole {
		return nil
	}
	for _, r := range TokenRoles {
		if r == role {
			return nil
		}
	}
	return &Error{Code: "42501", Message: "permission denied to set role \"" + role + "\""}
}

// setIsolation is check_XactIsoLevel.
func (b *backend) setIsolation(iso string) *Error {
	if iso == b.iso {
		return nil
	}
	if b.snapshot {
		return &Error{Code: "25001", Message: "SET TRANSACTION ISOLATION LEVEL must be called before any query"}
	}
	if len(b.xs) > 1 {
		return &Error{Code: "25001", Message: "SET TRANSACTION ISOLATION LEVEL must not be called in a subtransaction"}
	}
	b.iso = iso
	return nil
}

// whoami is api.whoami()'s row.
func (b *backend) whoami() []value {
	get := func(name string) value {
		if s := b.g.m[name]; s != nil && s.cur.val != "" {
			return text(s.cur.val)
		}
		return null
	}
	return []value{text(b.currentUser()), get("jwt.claims.sub"), get("request.jwt.claims")}
}

// fromColumns are the columns a FROM item offers.
func fromColumns(f *fromItem) ([]string, []ty) {
	switch f.kind {
	case fSeries:
		return []string{f.alias}, []ty{tyInt4}
	case fWhoami:
		return []string{"role", "sub", "claims"}, []ty{tyText, tyText, tyText}
	case fNotes:
		return []string{"id", "owner", "body"}, []ty{tyInt8, tyText, tyText}
	}
	return nil, nil
}

// analyzeStmt is parse analysis; ps receives the parameter and result
// types.
func (b *backend) analyzeStmt(s *stmt, sc *scope, ps *prepared) *Error {
	switch s.kind {
	case sSelect, sCopyOut:
		if err := analyzeSelect(s.sel, sc, ps); err != nil {
			return err
		}
	case sInsert:
		if _, err := analyze(s.insertValue, sc); err != nil {
			return err
		}
		if err := coerce(sc, s.insertValue, tyText); err != nil {
			return err
		}
	case sShow:
		ps.cols, ps.colTypes = []string{strings.ToLower(s.name)}, []ty{tyText}
	case sCall:
		if s.name != "commit_inside" {
			return &Error{Code: "42883", Message: "procedure " + s.name + "() does not exist", Position: sc.pos(s.namePos),
				Hint: "No procedure matches the given name and argument types. You might need to add explicit type casts."}
		}
		ps.cols, ps.colTypes = []string{"role", "sub"}, []ty{tyText, tyText}
	case sOwnSettings:
		ps.cols, ps.colTypes = []string{"name", "setting"}, []ty{tyText, tyText}
	case sOwnRoles:
		ps.cols, ps.colTypes = []string{"fact", "role", "a", "b", "c", "d"}, []ty{tyText, tyText, tyText, tyText, tyText, tyText}
	case sOwnValues:
		ps.cols, ps.colTypes = []string{"n", "v"}, []ty{tyText, tyText}
	}
	for i, t := range sc.params {
		switch t {
		case 0:
			if !sc.used(i + 1) {
				return &Error{Code: "42P18", Message: "could not determine data type of parameter $" + strconv.Itoa(i+1)}
			}
			sc.params[i] = tyText
		case tyUnknown:
			sc.params[i] = tyText
		}
	}
	ps.params = sc.params
	return nil
}

func analyzeSelect(sel *selectStmt, sc *scope, ps *prepared) *Error {
	if sel.from != nil {
		if sel.from.kind == fSeries {
			if len(sel.from.args) != 2 {
				return &Error{Code: "42883", Message: "function generate_series(" + argTypeNames(sel.from.args) + ") does not exist", Position: sc.pos(sel.from.at)}
			}
			for _, a := range sel.from.args {
				t, err := analyze(a, sc)
				if err != nil {
					return err
				}
				if t == tyUnknown {
					if err := coerce(sc, a, tyInt4); err != nil {
						return err
					}
				} else if t != tyInt4 && t != tyInt8 {
					return &Error{Code: "42883", Message: "function generate_series(" + argTypeNames(sel.from.args) + ") does not exist", Position: sc.pos(sel.from.at)}
				}
			}
		}
		sc.cols, sc.types = fromColumns(sel.from)
	}
	ps.cols, ps.colTypes = nil, nil
	var unknown []expr // targets of unknown type: text, once all are analysed
	for i := range sel.targets {
		t := &sel.targets[i]
		if t.star {
			if sel.from == nil {
				return &Error{Code: "42601", Message: "SELECT * with no tables specified is not valid", Position: sc.pos(t.at)}
			}
			ps.cols = append(ps.cols, sc.cols...)
			ps.colTypes = append(ps.colTypes, sc.types...)
			continue
		}
		typ, err := analyze(t.e, sc)
		if err != nil {
			return err
		}
		if typ == tyUnknown {
			unknown = append(unknown, t.e)
			typ = tyText
		}
		name := t.alias
		if name == "" {
			name, _ = colName(t.e)
		}
		ps.cols = append(ps.cols, name)
		ps.colTypes = append(ps.colTypes, typ)
	}
	for _, e := range unknown {
		if err := coerce(sc, e, tyText); err != nil {
			return err
		}
	}
	if sel.where != nil {
		if _, err := analyze(sel.where, sc); err != nil {
			return err
		}
		if err := coerce(sc, sel.where, tyBool); err != nil {
			return err
		}
	}
	if sel.order != nil {
		if _, err := analyze(sel.order, sc); err != nil {
			return err
		}
	}
	return nil
}

// used reports whether parameter n is referenced.
func (sc *scope) used(n int) bool { return sc.refs[n] }

// start plans the statement and starts the executor: constants are
// folded (1/0 fails here) and privileges checked.
func (b *backend) start(s *stmt, params []value) *Error {
	ev := &evaluator{b: b, params: params}
	switch s.kind {
	case sSelect, sCopyOut:
		sel := s.sel
		for _, t := range sel.targets {
			if t.e != nil {
				if err := fold(t.e, ev); err != nil {
					return err
				}
			}
		}
		if sel.from != nil {
			for _, a := range sel.from.args {
				if err := fold(a, ev); err != nil {
					return err
				}
			}
		}
		if sel.where != nil {
			if err := fold(sel.where, ev); err != nil {
				return err
			}
		}
		return b.checkSelect(sel)
	case sInsert, sCopyIn:
		if b.currentUser() != "web_user" {
			return &Error{Code: "42501", Message: "permission denied for table notes"}
		}
	case sShow:
		if _, _, err := b.showSetting(s.name); err != nil {
			return err
		}
	}
	return nil
}

// checkSelect checks the privileges a SELECT needs.
func (b *backend) checkSelect(sel *selectStmt) *Error {
	if sel.from != nil {
		switch sel.from.kind {
		case fNotes:
			if b.currentUser() != "web_user" {
				return &Error{Code: "42501", Message: "permission denied for table notes"}
			}
		case fWhoami:
			if !b.isTokenRole() {
				return &Error{Code: "42501", Message: "permission denied for function whoami"}
			}
		}
	}
	for _, t := range sel.targets {
		if callsWhoami(t.e) && !b.isTokenRole() {
			return &Error{Code: "42501", Message: "permission denied for function whoami"}
		}
	}
	return nil
}

func callsWhoami(e expr) bool {
	switch e := e.(type) {
	case *eFunc:
		if e.name == "whoami" {
			return true
		}
		for _, a := range e.args {
			if callsWhoami(a) {
				return true
			}
		}
	case *eOp:
		return callsWhoami(e.l) || e.r != nil && callsWhoami(e.r)
	case *eCast:
		return callsWhoami(e.x)
	case *eIsNull:
		return callsWhoami(e.x)
	}
	return false
}

// runSimple runs one statement of a simple Query through all three
// phases, sending its rows; it returns the command tag. fatal ends the
// connection.
func (b *backend) runSimple(s *stmt) (string, *Error, bool) {
	ps := &prepared{st: s}
	b.note("query", s, "")
	if s.needsSnapshot() {
		b.snapshot = true
	}
	sc := &scope{src: s.txt.src, simple: true}
	if err := b.analyzeStmt(s, sc, ps); err != nil {
		return "", err, false
	}
	if err := b.start(s, nil); err != nil {
		return "", err, false
	}
	switch s.kind {
	case sCopyIn:
		return b.copyIn()
	case sCopyOut:
		tag, err := b.copyOut(s, nil)
		return tag, err, false
	}
	// A query's RowDescription goes before its rows are made; a utility
	// statement's (SHOW, CALL) once it ran, with its rows.
	query := s.kind == sSelect || s.kind == sOwnSettings || s.kind == sOwnRoles || s.kind == sOwnValues
	if query {
		b.send(rowDescription(ps.cols, ps.colTypes))
	}
	rows, tag, err := b.run(s, nil, ps)
	if err != nil {
		return "", err, false
	}
	if !query && s.returnsRows() {
		b.send(rowDescription(ps.cols, ps.colTypes))
	}
	for _, r := range rows {
		b.send(dataRow(r))
	}
	if tag == "" {
		tag = "SELECT " + strconv.Itoa(len(rows))
	}
	return tag, nil, false
}

// runPortal runs (or goes on fetching from) a portal: at most maxRows
// rows (0: all); suspended says rows may remain.
func (b *backend) runPortal(p *portal, maxRows int) (tag string, suspended bool, err *Error) {
	s := p.ps.st
	if !p.ran {
		p.ran = true
		switch s.kind {
		case sCopyIn:
			return "", false, &Error{Code: "pgmodel", Message: "pgmodel: COPY FROM STDIN in the extended protocol is not modelled"}
		case sCopyOut:
			tag, err := b.copyOut(s, p.params)
			p.done = true
			return tag, false, err
		}
		rows, tag, err := b.run(s, p.params, p.ps)
		if err != nil {
			return "", false, err
		}
		p.rows, p.tag = rows, tag
		if !s.returnsRows() {
			p.done = true
			return tag, false, nil
		}
	} else if p.done {
		return "", false, &Error{Code: "55000", Message: "portal \"" + p.name + "\" cannot be run"}
	}
	n := 0
	for p.pos < len(p.rows) && (maxRows <= 0 || n < maxRows) {
		b.send(dataRow(p.rows[p.pos]))
		p.pos++
		n++
	}
	if maxRows > 0 && n == maxRows {
		return "", true, nil
	}
	if p.tag != "" {
		return p.tag, false, nil
	}
	return "SELECT " + strconv.Itoa(n), false, nil
}

func dataRow(r []value) *pgproto3.DataRow {
	d := &pgproto3.DataRow{Values: make([][]byte, len(r))}
	for i, v := range r {
		if !v.null {
			d.Values[i] = []byte(v.s)
		}
	}
	return d
}

// run runs a statement: its rows, and its tag ("" for a SELECT, whose
// tag counts the rows sent).
func (b *backend) run(s *stmt, params []value, ps *prepared) ([][]value, string, *Error) {
	switch s.kind {
	case sSelect:
		rows, err := b.selectRows(s.sel, params)
		return rows, "", err
	case sBegin:
		b.beginBlock()
		if s.isolation != "" {
			if err := b.setIsolation(s.isolation); err != nil {
				return nil, "", err
			}
		}
		if strings.HasPrefix(strings.ToLower(s.txt.text()), "start") {
			return nil, "START TRANSACTION", nil
		}
		return nil, "BEGIN", nil
	case sCommit:
		ok, err := b.endBlock(s.chain)
		if err != nil {
			return nil, "", err
		}
		if !ok {
			return nil, "ROLLBACK", nil
		}
		return nil, "COMMIT", nil
	case sRollback:
		return nil, "ROLLBACK", b.userAbortBlock(s.chain)
	case sSavepoint:
		if err := b.requireBlock("SAVEPOINT"); err != nil {
			return nil, "", err
		}
		return nil, "SAVEPOINT", b.defineSavepoint(s.name)
	case sRelease:
		if err := b.requireBlock("RELEASE SAVEPOINT"); err != nil {
			return nil, "", err
		}
		return nil, "RELEASE", b.releaseSavepoint(s.name)
	case sRollbackTo:
		if err := b.requireBlock("ROLLBACK TO SAVEPOINT"); err != nil {
			return nil, "", err
		}
		return nil, "ROLLBACK", b.rollbackToSavepoint(s.name)
	case sPrepareTx:
		ok, err := b.prepareBlock()
		if err != nil {
			return nil, "", err
		}
		if !ok {
			return nil, "ROLLBACK", nil
		}
		return nil, "PREPARE TRANSACTION", nil
	case sSetTx:
		if !b.inBlock() {
			b.notice(&Error{Severity: "WARNING", Code: "25P01", Message: "SET TRANSACTION can only be used in transaction blocks"})
		}
		if s.isolation != "" {
			if err := b.setIsolation(s.isolation); err != nil {
				return nil, "", err
			}
		}
		return nil, "SET", nil
	case sSet:
		if s.local && !b.inBlock() {
			b.notice(&Error{Severity: "WARNING", Code: "25P01", Message: "SET LOCAL can only be used in transaction blocks"})
		}
		return nil, "SET", b.setSetting(s.name, s.value, s.local)
	case sReset:
		return nil, "RESET", b.setSetting(s.name, nil, false)
	case sResetAll:
		b.g.resetAll()
		return nil, "RESET", nil
	case sShow:
		v, _, err := b.showSetting(s.name)
		if err != nil {
			return nil, "", err
		}
		return [][]value{{text(v)}}, "SHOW", nil
	case sCall:
		return b.call()
	case sInsert:
		ev := &evaluator{b: b, params: params}
		v, err := ev.eval(s.insertValue, nil)
		if err != nil {
			return nil, "", err
		}
		b.insertNote(v)
		return nil, "INSERT 0 1", nil
	case sVacuum:
		if err := b.preventInBlock("VACUUM"); err != nil {
			return nil, "", err
		}
		if s.name != "" && s.name != "notes" {
			return nil, "", &Error{Code: "42P01", Message: "relation \"" + s.name + "\" does not exist"}
		}
		b.notice(&Error{Severity: "WARNING", Code: "01000", Message: "skipping \"notes\" --- only table or database owner can vacuum it"})
		return nil, "VACUUM", nil
	case sDiscard:
		if s.name == "all" {
			if err := b.preventInBlock("DISCARD ALL"); err != nil {
				return nil, "", err
			}
			none := "none"
			_ = b.setSetting("role", &none, false)
			b.g.resetAll()
			b.stmts = map[string]*prepared{}
			b.dropPortals(0)
		}
		return nil, "DISCARD " + strings.ToUpper(s.name), nil
	case sCloseAll:
		b.dropPortals(0)
		return nil, "CLOSE CURSOR ALL", nil
	case sUnlisten:
		return nil, "UNLISTEN", nil
	case sOwnSettings:
		var rows [][]value
		for _, st := range b.g.sessionSourced() {
			rows = append(rows, []value{text(st.name), text(st.cur.val)})
		}
		for _, n := range s.names {
			v, ok, _ := b.showSetting(n)
			if ok {
				rows = append(rows, []value{text(n), text(v)})
			} else {
				rows = append(rows, []value{text(n), null})
			}
		}
		return rows, "", nil
	case sOwnRoles:
		// The lock-down checks' facts (session/lockdown.Query) of a
		// database locked down as docs/SECURITY.md says: a NOINHERIT
		// login with no privileges, granted the token roles.
		row := func(vs ...string) []value {
			r := make([]value, 6)
			for i := range r {
				r[i] = text("")
				if i < len(vs) {
					r[i] = text(vs[i])
				}
			}
			return r
		}
		rows := [][]value{row("login", LoginRole, "app", "postgres"), row("role", LoginRole)}
		for _, r := range TokenRoles {
			rows = append(rows, row("role", r), row("edge", LoginRole, r))
		}
		return rows, "", nil
	case sOwnValues:
		var rows [][]value
		for i, n := range s.names {
			v := s.vals[i]
			if err := b.setSetting(n, &v, true); err != nil {
				return nil, "", err
			}
			shown, _, _ := b.showSetting(n)
			rows = append(rows, []value{text(n), text(shown)})
		}
		return rows, "", nil
	}
	return nil, "", &Error{Code: "pgmodel", Message: fmt.Sprintf("pgmodel: statement kind %d not modelled", s.kind)}
}

// call runs CALL commit_inside(): COMMIT, then report who runs.
func (b *backend) call() ([][]value, string, *Error) {
	if !b.isTokenRole() {
		return nil, "", &Error{Code: "42501", Message: "permission denied for procedure commit_inside"}
	}
	if b.inBlock() {
		// An atomic context: a transaction block, implicit or explicit.
		return nil, "", &Error{Code: "2D000", Message: "invalid transaction termination"}
	}
	b.commitTransaction()
	b.startTransaction()
	b.snapshot = true
	b.record(Record{Via: "procedure", SQL: "commit_inside: after its COMMIT"})
	w := b.whoami()
	return [][]value{{w[0], w[1]}}, "CALL", nil
}

func (b *backend) insertNote(body value) {
	n := note{id: b.srv.data.nextNoteID()}
	if !body.null {
		s := body.s
		n.body = &s
	}
	if w := b.whoami(); !w[1].null {
		s := w[1].s
		n.owner = &s
	}
	b.notes = append(b.notes, n)
}

// visibleNotes are the committed notes and this transaction's own.
func (b *backend) visibleNotes() []note {
	ns := b.srv.data.committedNotes()
	ns = append(ns, b.notes...)
	sort.Slice(ns, func(i, j int) bool { return ns[i].id < ns[j].id })
	return ns
}

// selectRows runs a SELECT.
func (b *backend) selectRows(sel *selectStmt, params []value) ([][]value, *Error) {
	ev := &evaluator{b: b, params: params}
	var src [][]value
	switch {
	case sel.from == nil:
		src = [][]value{nil}
	case sel.from.kind == fSeries:
		lo, err := ev.eval(sel.from.args[0], nil)
		if err != nil {
			return nil, err
		}
		hi, err := ev.eval(sel.from.args[1], nil)
		if err != nil {
			return nil, err
		}
		if lo.null || hi.null {
			break
		}
		a, _ := strconv.ParseInt(lo.s, 10, 64)
		z, _ := strconv.ParseInt(hi.s, 10, 64)
		for i := a; i <= z; i++ {
			src = append(src, []value{text(strconv.FormatInt(i, 10))})
		}
	case sel.from.kind == fWhoami:
		src = [][]value{b.whoami()}
	case sel.from.kind == fNotes:
		for _, n := range b.visibleNotes() {
			r := []value{text(strconv.FormatInt(n.id, 10)), null, null}
			if n.owner != nil {
				r[1] = text(*n.owner)
			}
			if n.body != nil {
				r[2] = text(*n.body)
			}
			src = append(src, r)
		}
	}
	var kept [][]value
	for _, r := range src {
		if sel.where != nil {
			v, err := ev.eval(sel.where, r)
			if err != nil {
				return nil, err
			}
			if v.null || v.s != "t" {
				continue
			}
		}
		kept = append(kept, r)
	}
	if sel.order != nil {
		keys := make([]value, len(kept))
		for i, r := range kept {
			v, err := ev.eval(sel.order, r)
			if err != nil {
				return nil, err
			}
			keys[i] = v
		}
		idx := make([]int, len(kept))
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(i, j int) bool {
			c := compare(keys[idx[i]], keys[idx[j]])
			if sel.desc {
				return c > 0
			}
			return c < 0
		})
		sorted := make([][]value, len(kept))
		for i, k := range idx {
			sorted[i] = kept[k]
		}
		kept = sorted
	}
	if aggregate(sel) {
		ev.count = int64(len(kept))
		kept = [][]value{nil}
	}
	var out [][]value
	for _, r := range kept {
		var row []value
		for _, t := range sel.targets {
			if t.star {
				row = append(row, r...)
				continue
			}
			v, err := ev.eval(t.e, r)
			if err != nil {
				return nil, err
			}
			row = append(row, v)
		}
		out = append(out, row)
	}
	return out, nil
}

// aggregate reports whether a SELECT is count(*).
func aggregate(sel *selectStmt) bool {
	for _, t := range sel.targets {
		if f, ok := t.e.(*eFunc); ok && f.star {
			return true
		}
	}
	return false
}

// copyIn runs COPY notes (body) FROM STDIN in a simple Query: it reads the
// client's CopyData until CopyDone or CopyFail.
func (b *backend) copyIn() (string, *Error, bool) {
	b.send(&pgproto3.CopyInResponse{OverallFormat: 0, ColumnFormatCodes: []uint16{0}})
	b.flush()
	b.owed = b.sent
	var data []byte
	for {
		typ, body, err := b.read()
		if err != nil {
			return "", nil, true
		}
		switch typ {
		case 'd':
			data = append(data, body...)
		case 'c':
			lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
			if len(data) == 0 {
				lines = nil
			}
			for _, l := range lines {
				if l == `\N` {
					b.insertNote(null)
				} else {
					b.insertNote(text(l))
				}
			}
			return "COPY " + strconv.Itoa(len(lines)), nil, false
		case 'f':
			var m pgproto3.CopyFail
			_ = m.Decode(body)
			return "", &Error{Code: "57014", Message: "COPY from stdin failed: " + m.Message}, false
		case 'H', 'S':
		default:
			b.sendError(&Error{Code: "08P01", Message: fmt.Sprintf("unexpected message type 0x%02X during COPY from stdin", typ)})
			b.sendError(&Error{Severity: "FATAL", Code: "08P01", Message: "terminating connection because protocol synchronization was lost"})
			return "", nil, true
		}
	}
}

// copyOut runs COPY ... TO STDOUT.
func (b *backend) copyOut(s *stmt, params []value) (string, *Error) {
	rows, err := b.selectRows(s.sel, params)
	if err != nil {
		return "", err
	}
	cols := 0
	for _, t := range s.sel.targets {
		if t.star {
			cols += 3
		} else {
			cols++
		}
	}
	b.send(&pgproto3.CopyOutResponse{OverallFormat: 0, ColumnFormatCodes: make([]uint16, cols)})
	for _, r := range rows {
		var line strings.Builder
		for i, v := range r {
			if i > 0 {
				line.WriteByte('\t')
			}
			if v.null {
				line.WriteString(`\N`)
				continue
			}
			line.WriteString(strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`).Replace(v.s))
		}
		line.WriteByte('\n')
		b.send(&pgproto3.CopyData{Data: []byte(line.String())})
	}
	b.send(&pgproto3.CopyDone{})
	return "COPY " + strconv.Itoa(len(rows)), nil
}

// dropPortals drops the portals created at transaction level level or
// deeper, but not the one running.
func (b *backend) dropPortals(level int) {
	for n, p := range b.portals {
		if p.level >= level && p != b.active {
			delete(b.portals, n)
		}
	}
}

// reparentPortals hands a committed savepoint's portals to its parent.
func (b *backend) reparentPortals(level int) {
	for _, p := range b.portals {
		if p.level >= level {
			p.level = level - 1
		}
	}
}
