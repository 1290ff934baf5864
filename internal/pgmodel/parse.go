package pgmodel

import (
	"strings"
)

// The SQL the model understands, keywords in any case:
//
//	BEGIN [WORK | TRANSACTION] [modes] | START TRANSACTION [modes]
//	COMMIT | END [WORK | TRANSACTION] [AND [NO] CHAIN]
//	ROLLBACK | ABORT [WORK | TRANSACTION] [AND [NO] CHAIN]
//	ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
//	SAVEPOINT name | RELEASE [SAVEPOINT] name | PREPARE TRANSACTION 'gid'
//	SET [LOCAL | SESSION] TRANSACTION modes
//	SET [LOCAL | SESSION] name {TO | =} {value [, ...] | DEFAULT}
//	SET [LOCAL | SESSION] ROLE {name | 'name' | NONE}
//	RESET {name | ROLE | ALL} | SHOW {name | ROLE}
//	SELECT targets [FROM item] [WHERE expr] [ORDER BY expr [ASC|DESC]]
//	   item: generate_series(a, b) [AS] alias | whoami() | notes, each [AS] alias
//	CALL commit_inside()
//	INSERT INTO notes (body) VALUES (expr)
//	COPY notes [(body)] FROM STDIN | COPY {notes | (SELECT ...)} TO STDOUT
//	VACUUM [name] | DISCARD {ALL | TEMP | SEQUENCES | PLANS}
//	CLOSE ALL | UNLISTEN *
//
// and, recognised by their shape, pgtoken's own reads of pg_settings and
// pg_roles and its check of startup settings (own.go). Expressions:
// integer and string constants (also E'' and $$ $$), $n, columns of the
// FROM item, current_user, session_user, current_role, casts (::int,
// ::bigint, ::text, ::bool), + - * / || = <> < > <= >=, IS [NOT] NULL,
// parentheses, and the functions current_setting, set_config, repeat,
// nullif, coalesce, whoami, count(*) and pg_advisory_unlock_all (also
// qualified with pg_catalog. or api.).

type stmtKind uint8

const (
	sSelect stmtKind = iota + 1
	sBegin
	sCommit
	sRollback
	sRollbackTo
	sSavepoint
	sRelease
	sPrepareTx
	sSetTx
	sSet
	sReset
	sResetAll
	sShow
	sCall
	sInsert
	sCopyIn
	sCopyOut
	sVacuum
	sDiscard
	sCloseAll
	sUnlisten
	sOwnSettings // SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' [UNION ALL ...]
	sOwnRoles    // pgtoken's lock-down checks (they read pg_catalog.pg_roles)
	sOwnValues   // SELECT n, v FROM (VALUES (name, set_config(name, value, true)), ...) v(n, v)
)

// stmt is one parsed statement.
type stmt struct {
	kind stmtKind
	txt  stmtText

	chain     bool   // COMMIT/ROLLBACK AND CHAIN
	name      string // savepoint, setting, vacuum target, discard what
	isolation string // BEGIN/SET TRANSACTION ISOLATION LEVEL
	local     bool   // SET LOCAL
	value     *string
	namePos   int // byte offset of the setting or object name

	sel         *selectStmt
	insertValue expr     // INSERT's value
	names       []string // sOwnSettings: custom names; sOwnValues: names
	vals        []string // sOwnValues: values
}

// selectStmt is a SELECT.
type selectStmt struct {
	targets []target
	from    *fromItem
	where   expr
	order   expr
	desc    bool
	star    bool
}

type target struct {
	e     expr
	alias string
	star  bool
	at    int
}

type fromKind uint8

const (
	fSeries fromKind = iota + 1
	fWhoami
	fNotes
)

type fromItem struct {
	kind  fromKind
	args  []expr
	alias string
	at    int
}

// control reports whether the statement only controls the transaction.
func (s *stmt) control() bool {
	switch s.kind {
	case sBegin, sCommit, sRollback, sRollbackTo, sSavepoint, sRelease, sPrepareTx, sSetTx:
		return true
	}
	return false
}

// transactionStmt is Postgres's TransactionStmt (IsTransactionStmtList).
func (s *stmt) transactionStmt() bool {
	switch s.kind {
	case sBegin, sCommit, sRollback, sRollbackTo, sSavepoint, sRelease, sPrepareTx:
		return true
	}
	return false
}

// exitStmt is what a failed transaction still runs (IsTransactionExitStmt).
func (s *stmt) exitStmt() bool {
	switch s.kind {
	case sCommit, sRollback, sRollbackTo, sPrepareTx:
		return true
	}
	return false
}

// needsSnapshot reports whether analysing or running the statement takes
// a snapshot (analyze_requires_snapshot, PlannedStmtRequiresSnapshot).
func (s *stmt) needsSnapshot() bool {
	switch s.kind {
	case sSelect, sCall, sInsert, sCopyIn, sCopyOut, sOwnSettings, sOwnRoles, sOwnValues:
		return true
	}
	return false
}

// returnsRows reports whether the statement has a result description.
func (s *stmt) returnsRows() bool {
	switch s.kind {
	case sSelect, sShow, sCall, sOwnSettings, sOwnRoles, sOwnValues:
		return true
	}
	return false
}

// parser reads one statement's tokens.
type parser struct {
	st  stmtText
	i   int
	err *Error
}

func (p *parser) peek() token { return p.st.toks[p.i] }
func (p *parser) atEnd() bool { t := p.peek(); return t.kind == tEOF || t.is(";") }
func (p *parser) next() token {
	t := p.peek()
	if !p.atEnd() {
		p.i++
	}
	return t
}

// fail records a syntax error at the current token (the first one wins).
func (p *parser) fail() {
	if p.err == nil {
		p.err = syntaxError(p.st.src, p.peek())
	}
}

// accept consumes the keyword or operator s if it is next.
func (p *parser) accept(s string) bool {
	if p.peek().is(s) {
		p.next()
		return true
	}
	return false
}

// expect consumes s or fails.
func (p *parser) expect(s string) {
	if !p.accept(s) {
		p.fail()
	}
}

// end requires the statement to be over.
func (p *parser) end() {
	if !p.atEnd() {
		p.fail()
	}
}

// ident reads an identifier (keywords allowed where Postgres allows them
// as names, which the model does not distinguish).
func (p *parser) ident() (string, int) {
	t := p.peek()
	if t.kind == tIdent || t.kind == tQIdent {
		p.next()
		return t.val, t.at
	}
	p.fail()
	return "", t.at
}

// parseStmt parses one statement.
func parseStmt(st stmtText) (*stmt, *Error) {
	p := &parser{st: st}
	s := p.stmt()
	if p.err != nil {
		return nil, p.err
	}
	s.txt = st
	return s, nil
}

func (p *parser) stmt() *stmt {
	if s := p.own(); s != nil {
		return s
	}
	t := p.next()
	s := &stmt{}
	switch {
	case t.is("begin"):
		s.kind = sBegin
		_ = p.accept("work") || p.accept("transaction")
		s.isolation = p.modes()
	case t.is("start"):
		s.kind = sBegin
		p.expect("transaction")
		s.isolation = p.modes()
	case t.is("commit") || t.is("end"):
		s.kind = sCommit
		_ = p.accept("work") || p.accept("transaction")
		s.chain = p.chain()
	case t.is("rollback") || t.is("abort"):
		s.kind = sRollback
		_ = p.accept("work") || p.accept("transaction")
		if t.is("rollback") && p.accept("to") {
			s.kind = sRollbackTo
			p.accept("savepoint")
			s.name, s.namePos = p.ident()
			break
		}
		s.chain = p.chain()
	case t.is("savepoint"):
		s.kind = sSavepoint
		s.name, s.namePos = p.ident()
	case t.is("release"):
		s.kind = sRelease
		p.accept("savepoint")
		s.name, s.namePos = p.ident()
	case t.is("prepare"):
		s.kind = sPrepareTx
		p.expect("transaction")
		if p.peek().kind != tString {
			p.fail()
		}
		s.name = p.next().val
	case t.is("set"):
		p.set(s)
	case t.is("reset"):
		s.kind = sReset
		switch {
		case p.accept("all"):
			s.kind = sResetAll
		case p.accept("role"):
			s.name = "role"
		default:
			s.name, s.namePos = p.settingName()
		}
	case t.is("show"):
		s.kind = sShow
		if p.accept("role") {
			s.name = "role"
		} else {
			s.name, s.namePos = p.settingName()
		}
	case t.is("select"):
		s.kind = sSelect
		s.sel = p.selectRest()
	case t.is("call"):
		s.kind = sCall
		s.name, s.namePos = p.qualified()
		p.expect("(")
		p.expect(")")
	case t.is("insert"):
		s.kind = sInsert
		p.expect("into")
		p.table()
		p.expect("(")
		if c, _ := p.ident(); c != "body" && p.err == nil {
			p.err = &Error{Code: "pgmodel", Message: "pgmodel: INSERT INTO notes (body) only"}
		}
		p.expect(")")
		p.expect("values")
		p.expect("(")
		s.insertValue = p.expr()
		p.expect(")")
	case t.is("copy"):
		p.copy(s)
	case t.is("vacuum"):
		s.kind = sVacuum
		if !p.atEnd() {
			s.name, s.namePos = p.qualified()
		}
	case t.is("discard"):
		s.kind = sDiscard
		w, _ := p.ident()
		switch w {
		case "all", "temp", "sequences", "plans":
			s.name = w
		case "temporary":
			s.name = "temp"
		default:
			p.i--
			p.fail()
		}
	case t.is("close"):
		s.kind = sCloseAll
		p.expect("all")
	case t.is("unlisten"):
		s.kind = sUnlisten
		p.expect("*")
	default:
		p.i--
		p.fail()
	}
	p.end()
	return s
}

// modes reads transaction modes: ISOLATION LEVEL ..., READ ONLY|WRITE,
// [NOT] DEFERRABLE, comma-separated; it returns the isolation level.
func (p *parser) modes() string {
	iso := ""
	for !p.atEnd() {
		switch {
		case p.accept("isolation"):
			p.expect("level")
			switch {
			case p.accept("serializable"):
				iso = "serializable"
			case p.accept("repeatable"):
				p.expect("read")
				iso = "repeatable read"
			case p.accept("read"):
				if p.accept("committed") {
					iso = "read committed"
				} else {
					p.expect("uncommitted")
					iso = "read uncommitted"
				}
			default:
				p.fail()
			}
		case p.accept("read"):
			if !p.accept("only") {
				p.expect("write")
			}
		case p.accept("not"):
			p.expect("deferrable")
		case p.accept("deferrable"):
		default:
			p.fail()
			return iso
		}
		p.accept(",")
	}
	return iso
}

// chain reads [AND [NO] CHAIN].
func (p *parser) chain() bool {
	if !p.accept("and") {
		return false
	}
	no := p.accept("no")
	p.expect("chain")
	return !no
}

// set parses what follows SET.
func (p *parser) set(s *stmt) {
	s.kind = sSet
	if p.accept("local") {
		s.local = true
	} else {
		p.accept("session")
	}
	switch {
	case p.accept("transaction"):
		s.kind = sSetTx
		s.isolation = p.modes()
		return
	case p.accept("role"):
		s.name = "role"
		t := p.next()
		switch {
		case t.kind == tString, t.kind == tIdent, t.kind == tQIdent:
			v := t.val
			s.value = &v
		default:
			p.i--
			p.fail()
		}
		return
	}
	s.name, s.namePos = p.settingName()
	if !p.accept("to") {
		p.expect("=")
	}
	if p.accept("default") {
		return
	}
	var vals []string
	for {
		t := p.next()
		switch t.kind {
		case tString, tIdent, tQIdent, tNumber:
			vals = append(vals, t.val)
		default:
			p.i--
			p.fail()
			return
		}
		if !p.accept(",") {
			break
		}
	}
	v := strings.Join(vals, ", ")
	s.value = &v
}

// settingName reads a dotted setting name.
func (p *parser) settingName() (string, int) {
	name, at := p.ident()
	for p.accept(".") {
		part, _ := p.ident()
		name += "." + part
	}
	return name, at
}

// qualified reads [schema.]name.
func (p *parser) qualified() (string, int) {
	name, at := p.ident()
	if p.accept(".") {
		name, _ = p.ident()
	}
	return name, at
}

// table reads the name of the table notes.
func (p *parser) table() {
	name, at := p.qualified()
	if name != "notes" && p.err == nil {
		p.err = &Error{Code: "42P01", Message: "relation \"" + name + "\" does not exist", Position: charPos(p.st.src, at)}
	}
}

func (p *parser) copy(s *stmt) {
	if p.accept("(") {
		if !p.accept("select") {
			p.fail()
			return
		}
		s.kind = sCopyOut
		s.sel = p.selectRest()
		p.expect(")")
		p.expect("to")
		p.expect("stdout")
		return
	}
	p.table()
	if p.accept("(") {
		if c, _ := p.ident(); c != "body" && p.err == nil {
			p.err = &Error{Code: "pgmodel", Message: "pgmodel: COPY notes (body) only"}
		}
		p.expect(")")
	}
	switch {
	case p.accept("from"):
		s.kind = sCopyIn
		p.expect("stdin")
	case p.accept("to"):
		s.kind = sCopyOut
		p.expect("stdout")
		s.sel = &selectStmt{star: true, from: &fromItem{kind: fNotes, alias: "notes"},
			targets: []target{{e: &eColumn{name: "owner"}}, {e: &eColumn{name: "body"}}}}
	default:
		p.fail()
	}
}

// selectRest parses a SELECT after the keyword.
func (p *parser) selectRest() *selectStmt {
	sel := &selectStmt{}
	for {
		at := p.peek().at
		if p.accept("*") {
			sel.targets = append(sel.targets, target{star: true, at: at})
		} else {
			t := target{e: p.expr(), at: at}
			if p.accept("as") {
				t.alias, _ = p.ident()
			} else if n := p.peek(); (n.kind == tIdent && !reserved[n.val]) || n.kind == tQIdent {
				t.alias = n.val
				p.next()
			}
			sel.targets = append(sel.targets, t)
		}
		if !p.accept(",") {
			break
		}
	}
	if p.accept("from") {
		sel.from = p.fromItem()
	}
	if p.accept("where") {
		sel.where = p.expr()
	}
	if p.accept("order") {
		p.expect("by")
		sel.order = p.expr()
		if p.accept("desc") {
			sel.desc = true
		} else {
			p.accept("asc")
		}
	}
	return sel
}

// reserved are keywords that end a target list entry.
var reserved = map[string]bool{"from": true, "where": true, "order": true, "as": true, "and": true, "or": true,
	"is": true, "not": true, "null": true, "union": true, "group": true, "limit": true, "to": true}

func (p *parser) fromItem() *fromItem {
	name, at := p.qualified()
	f := &fromItem{at: at, alias: name}
	switch {
	case p.peek().is("("):
		p.next()
		var args []expr
		if !p.peek().is(")") {
			for {
				args = append(args, p.expr())
				if !p.accept(",") {
					break
				}
			}
		}
		p.expect(")")
		switch name {
		case "generate_series":
			f.kind = fSeries
		case "whoami":
			f.kind = fWhoami
		default:
			if p.err == nil {
				p.err = &Error{Code: "42883", Message: "function " + name + "(" + argTypeNames(args) + ") does not exist", Position: charPos(p.st.src, at),
					Hint: "No function matches the given name and argument types. You might need to add explicit type casts."}
			}
		}
		f.args = args
	case name == "notes":
		f.kind = fNotes
	default:
		if p.err == nil {
			p.err = &Error{Code: "42P01", Message: "relation \"" + name + "\" does not exist", Position: charPos(p.st.src, at)}
		}
	}
	if p.accept("as") {
		f.alias, _ = p.ident()
	} else if n := p.peek(); n.kind == tIdent && !reserved[n.val] {
		f.alias = n.val
		p.next()
	}
	return f
}

// Expressions, by Postgres's precedence, lowest first: OR, AND, NOT, IS,
// comparison, other operators (||), + -, * /, unary minus, ::.

func (p *parser) expr() expr { return p.or() }

func (p *parser) or() expr {
	l := p.and()
	for p.peek().is("or") {
		at := p.next().at
		l = &eOp{op: "or", l: l, r: p.and(), at: at}
	}
	return l
}

func (p *parser) and() expr {
	l := p.not()
	for p.peek().is("and") {
		at := p.next().at
		l = &eOp{op: "and", l: l, r: p.not(), at: at}
	}
	return l
}

func (p *parser) not() expr {
	if p.peek().is("not") {
		at := p.next().at
		return &eOp{op: "not", l: p.not(), at: at}
	}
	return p.is()
}

func (p *parser) is() expr {
	l := p.cmp()
	for p.peek().is("is") {
		at := p.next().at
		not := p.accept("not")
		p.expect("null")
		l = &eIsNull{x: l, not: not, at: at}
	}
	return l
}

func (p *parser) cmp() expr {
	l := p.other()
	for {
		t := p.peek()
		switch {
		case t.is("="), t.is("<>"), t.is("!="), t.is("<"), t.is(">"), t.is("<="), t.is(">="):
			p.next()
			op := t.val
			if op == "!=" {
				op = "<>"
			}
			l = &eOp{op: op, l: l, r: p.other(), at: t.at}
		default:
			return l
		}
	}
}

func (p *parser) other() expr {
	l := p.add()
	for p.peek().is("||") {
		at := p.next().at
		l = &eOp{op: "||", l: l, r: p.add(), at: at}
	}
	return l
}

func (p *parser) add() expr {
	l := p.mul()
	for p.peek().is("+") || p.peek().is("-") {
		t := p.next()
		l = &eOp{op: t.val, l: l, r: p.mul(), at: t.at}
	}
	return l
}

func (p *parser) mul() expr {
	l := p.unary()
	for p.peek().is("*") || p.peek().is("/") {
		t := p.next()
		l = &eOp{op: t.val, l: l, r: p.unary(), at: t.at}
	}
	return l
}

func (p *parser) unary() expr {
	if p.peek().is("-") {
		at := p.next().at
		return &eOp{op: "neg", l: p.unary(), at: at}
	}
	return p.postfix()
}

func (p *parser) postfix() expr {
	x := p.primary()
	for p.peek().is("::") {
		at := p.next().at
		name, _ := p.ident()
		x = &eCast{x: x, to: name, at: at}
	}
	return x
}

func (p *parser) primary() expr {
	t := p.peek()
	switch t.kind {
	case tNumber:
		p.next()
		if t.n < 0 {
			if p.err == nil {
				p.err = &Error{Code: "pgmodel", Message: "pgmodel: integer constant out of range"}
			}
		}
		return &eConst{typ: tyInt4, val: t.val, at: t.at}
	case tString:
		p.next()
		return &eConst{typ: tyUnknown, val: t.val, at: t.at}
	case tParam:
		p.next()
		return &eParam{n: t.n, at: t.at}
	case tQIdent:
		p.next()
		return &eColumn{name: t.val, at: t.at}
	case tIdent:
		switch t.val {
		case "true", "false":
			p.next()
			v := "t"
			if t.val == "false" {
				v = "f"
			}
			return &eConst{typ: tyBool, val: v, at: t.at}
		case "null":
			p.next()
			return &eConst{typ: tyUnknown, null: true, at: t.at}
		case "current_user", "session_user", "current_role", "user":
			p.next()
			n := t.val
			if n == "user" || n == "current_role" {
				n = "current_user"
			}
			return &eSQLFunc{name: n, col: t.val, at: t.at}
		}
		if reserved[t.val] || t.val == "select" {
			p.fail()
			return &eConst{typ: tyUnknown, null: true}
		}
		name, at := p.qualified()
		if p.peek().is("(") {
			p.next()
			f := &eFunc{name: name, at: at}
			if p.accept("*") {
				f.star = true
			} else if !p.peek().is(")") {
				for {
					f.args = append(f.args, p.expr())
					if !p.accept(",") {
						break
					}
				}
			}
			p.expect(")")
			return f
		}
		return &eColumn{name: name, at: at}
	case tOp:
		if t.is("(") {
			p.next()
			x := p.expr()
			p.expect(")")
			return x
		}
	}
	p.fail()
	return &eConst{typ: tyUnknown, null: true}
}
