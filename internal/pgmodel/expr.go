package pgmodel

import (
	"strconv"
	"strings"
)

// ty is a type, by its OID.
type ty uint32

const (
	tyBool    ty = 16
	tyInt8    ty = 20
	tyInt4    ty = 23
	tyText    ty = 25
	tyUnknown ty = 705
	tyRecord  ty = 2249
	tyVoid    ty = 2278
)

// name is the type's name in messages.
func (t ty) name() string {
	switch t {
	case tyBool:
		return "boolean"
	case tyInt8:
		return "bigint"
	case tyInt4:
		return "integer"
	case tyText:
		return "text"
	case tyRecord:
		return "record"
	case tyVoid:
		return "void"
	}
	return "unknown"
}

// pgName is the type's name in pg_type (a cast's column name).
func (t ty) pgName() string {
	switch t {
	case tyBool:
		return "bool"
	case tyInt8:
		return "int8"
	case tyInt4:
		return "int4"
	case tyText:
		return "text"
	}
	return t.name()
}

// castType resolves a type name written after ::.
func castType(name string) (ty, bool) {
	switch name {
	case "int", "integer", "int4":
		return tyInt4, true
	case "bigint", "int8":
		return tyInt8, true
	case "text", "varchar":
		return tyText, true
	case "bool", "boolean":
		return tyBool, true
	}
	return 0, false
}

type expr interface{}

type eConst struct {
	typ  ty
	val  string
	null bool
	at   int
}

type eParam struct {
	n   int
	at  int
	typ ty // the parameter's type when this reference was analysed
}

type eColumn struct {
	name string
	at   int
	idx  int
	typ  ty
}

type eFunc struct {
	name string
	args []expr
	star bool
	at   int
	typ  ty
}

type eOp struct {
	op   string
	l, r expr
	at   int
	typ  ty
}

type eCast struct {
	x   expr
	to  string
	at  int
	typ ty
}

type eSQLFunc struct {
	name, col string
	at        int
}

type eIsNull struct {
	x   expr
	not bool
	at  int
}

// value is a datum in text form.
type value struct {
	s    string
	null bool
}

var null = value{null: true}

func text(s string) value { return value{s: s} }

// scope is what an expression may refer to: the FROM item's columns and
// the statement's parameters.
type scope struct {
	src    string
	cols   []string
	types  []ty
	params []ty // by number-1; 0 while unknown
	refs   map[int]bool
	simple bool // a simple Query: no parameters
}

func (sc *scope) pos(at int) int { return charPos(sc.src, at) }

// analyze resolves names and types (parse analysis): unknown columns and
// functions and bad constants fail here, with a position.
func analyze(e expr, sc *scope) (ty, *Error) {
	switch e := e.(type) {
	case *eConst:
		return e.typ, nil
	case *eParam:
		if sc.simple {
			return 0, &Error{Code: "42P02", Message: "there is no parameter $" + strconv.Itoa(e.n), Position: sc.pos(e.at)}
		}
		if sc.refs == nil {
			sc.refs = map[int]bool{}
		}
		sc.refs[e.n] = true
		for len(sc.params) < e.n {
			sc.params = append(sc.params, 0)
		}
		e.typ = tyUnknown
		if t := sc.params[e.n-1]; t != 0 {
			e.typ = t
		}
		return e.typ, nil
	case *eColumn:
		for i, c := range sc.cols {
			if c == e.name {
				e.idx, e.typ = i, sc.types[i]
				return e.typ, nil
			}
		}
		return 0, &Error{Code: "42703", Message: "column \"" + e.name + "\" does not exist", Position: sc.pos(e.at)}
	case *eSQLFunc:
		return tyText, nil // name, shown as text
	case *eIsNull:
		if _, err := analyze(e.x, sc); err != nil {
			return 0, err
		}
		return tyBool, nil
	case *eCast:
		to, ok := castType(e.to)
		if !ok {
			return 0, &Error{Code: "42704", Message: "type \"" + e.to + "\" does not exist", Position: sc.pos(e.at) + 2}
		}
		e.typ = to
		from, err := analyze(e.x, sc)
		if err != nil {
			return 0, err
		}
		if p, ok := e.x.(*eParam); ok && from == tyUnknown {
			if err := resolveParam(sc, p, to); err != nil {
				return 0, err
			}
			from = to
		}
		if c, ok := e.x.(*eConst); ok && from == tyUnknown && !c.null {
			if _, err := convert(text(c.val), to); err != nil {
				err.Position = sc.pos(c.at)
				return 0, err
			}
		}
		return to, nil
	case *eOp:
		return analyzeOp(e, sc)
	case *eFunc:
		return analyzeFunc(e, sc)
	}
	return 0, &Error{Code: "pgmodel", Message: "pgmodel: unknown expression"}
}

// resolveParam fixes an unknown parameter's type from its context. A
// reference analysed while the type was unknown that is then resolved to
// another type than a later reference got is Postgres's 42P08.
func resolveParam(sc *scope, p *eParam, t ty) *Error {
	for len(sc.params) < p.n {
		sc.params = append(sc.params, 0)
	}
	switch cur := sc.params[p.n-1]; {
	case cur == 0 || cur == tyUnknown:
		sc.params[p.n-1] = t
	case p.typ == tyUnknown && cur != t:
		return &Error{Code: "42P08", Message: "inconsistent types deduced for parameter $" + strconv.Itoa(p.n), Position: sc.pos(p.at),
			Detail: cur.name() + " versus " + t.name()}
	}
	p.typ = t
	return nil
}

// coerce fixes an unknown side (a constant or parameter) to t.
func coerce(sc *scope, e expr, t ty) *Error {
	switch e := e.(type) {
	case *eParam:
		if e.typ == tyUnknown {
			return resolveParam(sc, e, t)
		}
	case *eConst:
		if e.typ == tyUnknown {
			e.typ = t
		}
	}
	return nil
}

func analyzeOp(e *eOp, sc *scope) (ty, *Error) {
	lt, err := analyze(e.l, sc)
	if err != nil {
		return 0, err
	}
	rt := ty(0)
	if e.r != nil {
		if rt, err = analyze(e.r, sc); err != nil {
			return 0, err
		}
	}
	noOp := func() (ty, *Error) {
		msg := "operator does not exist: " + lt.name() + " " + e.op + " " + rt.name()
		if e.r == nil {
			msg = "operator does not exist: " + e.op + " " + lt.name()
		}
		return 0, &Error{Code: "42883", Message: msg, Position: sc.pos(e.at),
			Hint: "No operator matches the given name and argument types. You might need to add explicit type casts."}
	}
	switch e.op {
	case "and", "or", "not":
		for _, x := range []expr{e.l, e.r} {
			if x != nil {
				if err := coerce(sc, x, tyBool); err != nil {
					return 0, err
				}
			}
		}
		e.typ = tyBool
		return tyBool, nil
	case "neg":
		if lt == tyUnknown {
			lt = tyInt4
			if err := coerce(sc, e.l, tyInt4); err != nil {
				return 0, err
			}
		}
		if lt != tyInt4 && lt != tyInt8 {
			return noOp()
		}
		e.typ = lt
		return lt, nil
	case "||":
		switch {
		case lt == tyUnknown && rt == tyUnknown:
			if err := coerce(sc, e.l, tyText); err != nil {
				return 0, err
			}
			if err := coerce(sc, e.r, tyText); err != nil {
				return 0, err
			}
		case lt == tyUnknown:
			if err := coerce(sc, e.l, tyText); err != nil {
				return 0, err
			}
		case rt == tyUnknown:
			if err := coerce(sc, e.r, tyText); err != nil {
				return 0, err
			}
		case lt != tyText && rt != tyText:
			return noOp()
		}
		e.typ = tyText
		return tyText, nil
	}
	// Arithmetic and comparison: both sides of one type, an unknown side
	// taking the other's.
	switch {
	case lt == tyUnknown && rt == tyUnknown:
		if e.op == "+" || e.op == "-" || e.op == "*" || e.op == "/" {
			return noOp()
		}
		lt, rt = tyText, tyText
		if err := coerce(sc, e.l, tyText); err != nil {
			return 0, err
		}
		if err := coerce(sc, e.r, tyText); err != nil {
			return 0, err
		}
	case lt == tyUnknown:
		lt = rt
		if err := coerce(sc, e.l, rt); err != nil {
			return 0, err
		}
	case rt == tyUnknown:
		rt = lt
		if err := coerce(sc, e.r, lt); err != nil {
			return 0, err
		}
	}
	isInt := func(t ty) bool { return t == tyInt4 || t == tyInt8 }
	switch e.op {
	case "+", "-", "*", "/":
		if !isInt(lt) || !isInt(rt) {
			return noOp()
		}
		e.typ = tyInt4
		if lt == tyInt8 || rt == tyInt8 {
			e.typ = tyInt8
		}
		return e.typ, nil
	default: // comparison
		if lt != rt && !(isInt(lt) && isInt(rt)) {
			return noOp()
		}
		e.typ = tyBool
		return tyBool, nil
	}
}

// function is a function the model knows.
type function struct {
	args      []ty // nil: any number (coalesce)
	ret       ty   // 0: the type of the first argument
	immutable bool
}

var functions = map[string][]function{
	"current_setting":        {{args: []ty{tyText}, ret: tyText}, {args: []ty{tyText, tyBool}, ret: tyText}},
	"set_config":             {{args: []ty{tyText, tyText, tyBool}, ret: tyText}},
	"repeat":                 {{args: []ty{tyText, tyInt4}, ret: tyText, immutable: true}},
	"nullif":                 {{args: []ty{0, 0}, immutable: true}},
	"coalesce":               {{immutable: true}},
	"whoami":                 {{args: []ty{}, ret: tyRecord}},
	"pg_advisory_unlock_all": {{args: []ty{}, ret: tyVoid}},
}

func analyzeFunc(e *eFunc, sc *scope) (ty, *Error) {
	if e.star {
		if e.name != "count" {
			return 0, &Error{Code: "pgmodel", Message: "pgmodel: only count(*) takes *"}
		}
		e.typ = tyInt8
		return tyInt8, nil
	}
	types := make([]ty, len(e.args))
	for i, a := range e.args {
		t, err := analyze(a, sc)
		if err != nil {
			return 0, err
		}
		types[i] = t
	}
	missing := &Error{Code: "42883", Message: "function " + e.name + "(" + typeNames(types) + ") does not exist", Position: sc.pos(e.at),
		Hint: "No function matches the given name and argument types. You might need to add explicit type casts."}
	for _, f := range functions[e.name] {
		switch {
		case e.name == "coalesce" || e.name == "nullif":
			if e.name == "nullif" && len(types) != 2 || len(types) == 0 {
				continue
			}
			t := tyUnknown
			for _, a := range types {
				if a != tyUnknown {
					t = a
					break
				}
			}
			if t == tyUnknown {
				t = tyText
			}
			for i, a := range types {
				if a == tyUnknown {
					if err := coerce(sc, e.args[i], t); err != nil {
						return 0, err
					}
				} else if a != t {
					return 0, &Error{Code: "42804", Message: strings.ToUpper(e.name) + " types " + t.name() + " and " + a.name() + " cannot be matched", Position: sc.pos(exprAt(e.args[i]))}
				}
			}
			e.typ = t
			return t, nil
		case len(f.args) != len(types):
			continue
		}
		ok := true
		for i, want := range f.args {
			if types[i] != want && types[i] != tyUnknown {
				ok = false
			}
		}
		if !ok {
			continue
		}
		for i, want := range f.args {
			if types[i] == tyUnknown {
				if err := coerce(sc, e.args[i], want); err != nil {
					return 0, err
				}
			}
		}
		e.typ = f.ret
		return f.ret, nil
	}
	return 0, missing
}

func typeNames(types []ty) string {
	names := make([]string, len(types))
	for i, t := range types {
		names[i] = t.name()
	}
	return strings.Join(names, ", ")
}

// argTypeNames names the types of constant arguments (for errors raised
// while parsing).
func argTypeNames(args []expr) string {
	types := make([]ty, len(args))
	for i, a := range args {
		types[i] = tyUnknown
		if c, ok := a.(*eConst); ok {
			types[i] = c.typ
		}
	}
	return typeNames(types)
}

func exprAt(e expr) int {
	switch e := e.(type) {
	case *eConst:
		return e.at
	case *eParam:
		return e.at
	case *eColumn:
		return e.at
	case *eFunc:
		return e.at
	case *eOp:
		return exprAt(e.l)
	case *eCast:
		return exprAt(e.x)
	case *eSQLFunc:
		return e.at
	case *eIsNull:
		return exprAt(e.x)
	}
	return 0
}

// colName is the column name Postgres gives an expression
// (FigureColname) and how strong the choice is (2: a name, 1: a type).
func colName(e expr) (string, int) {
	switch e := e.(type) {
	case *eColumn:
		return e.name, 2
	case *eFunc:
		return e.name, 2
	case *eSQLFunc:
		return e.col, 2
	case *eCast:
		if n, s := colName(e.x); s > 1 {
			return n, s
		}
		t, _ := castType(e.to)
		return t.pgName(), 1
	}
	return "?column?", 0
}

// foldable reports whether an expression is immutable, with no
// parameters or columns: the planner evaluates it (and raises its errors)
// before anything runs.
func foldable(e expr) bool {
	switch e := e.(type) {
	case *eConst:
		return true
	case *eOp:
		return foldable(e.l) && (e.r == nil || foldable(e.r))
	case *eCast:
		return foldable(e.x)
	case *eIsNull:
		return foldable(e.x)
	case *eFunc:
		fs := functions[e.name]
		if len(fs) == 0 || !fs[0].immutable {
			return false
		}
		for _, a := range e.args {
			if !foldable(a) {
				return false
			}
		}
		return true
	}
	return false
}

// fold evaluates the foldable parts of e, as the planner does, returning
// the first error.
func fold(e expr, ev *evaluator) *Error {
	if _, ok := e.(*eConst); ok {
		return nil
	}
	if foldable(e) {
		_, err := ev.eval(e, nil)
		return err
	}
	switch e := e.(type) {
	case *eOp:
		if err := fold(e.l, ev); err != nil {
			return err
		}
		if e.r != nil {
			return fold(e.r, ev)
		}
	case *eCast:
		return fold(e.x, ev)
	case *eIsNull:
		return fold(e.x, ev)
	case *eFunc:
		for _, a := range e.args {
			if err := fold(a, ev); err != nil {
				return err
			}
		}
	}
	return nil
}

// evaluator evaluates expressions for one backend.
type evaluator struct {
	b      *backend
	params []value
	count  int64 // count(*)
}

func (ev *evaluator) eval(e expr, row []value) (value, *Error) {
	switch e := e.(type) {
	case *eConst:
		if e.null {
			return null, nil
		}
		if e.typ != tyUnknown && e.typ != tyText {
			return convert(text(e.val), e.typ)
		}
		return text(e.val), nil
	case *eParam:
		if e.n-1 < len(ev.params) {
			return ev.params[e.n-1], nil
		}
		return null, &Error{Code: "42P02", Message: "there is no parameter $" + strconv.Itoa(e.n)}
	case *eColumn:
		return row[e.idx], nil
	case *eSQLFunc:
		if e.name == "session_user" {
			return text(LoginRole), nil
		}
		return text(ev.b.currentUser()), nil
	case *eIsNull:
		v, err := ev.eval(e.x, row)
		if err != nil {
			return null, err
		}
		return boolValue(v.null != e.not), nil
	case *eCast:
		v, err := ev.eval(e.x, row)
		if err != nil || v.null {
			return v, err
		}
		return convert(v, e.typ)
	case *eOp:
		return ev.op(e, row)
	case *eFunc:
		return ev.call(e, row)
	}
	return null, &Error{Code: "pgmodel", Message: "pgmodel: unknown expression"}
}

func boolValue(b bool) value {
	if b {
		return text("t")
	}
	return text("f")
}

// convert casts a text-form value to t.
func convert(v value, t ty) (value, *Error) {
	if v.null {
		return v, nil
	}
	switch t {
	case tyInt4, tyInt8:
		bits := 32
		if t == tyInt8 {
			bits = 64
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v.s), 10, bits)
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return null, &Error{Code: "22003", Message: "value \"" + v.s + "\" is out of range for type " + t.name()}
			}
			return null, &Error{Code: "22P02", Message: "invalid input syntax for type " + t.name() + ": \"" + v.s + "\""}
		}
		return text(strconv.FormatInt(n, 10)), nil
	case tyBool:
		switch strings.ToLower(strings.TrimSpace(v.s)) {
		case "t", "true", "yes", "on", "1", "y":
			return text("t"), nil
		case "f", "false", "no", "off", "0", "n":
			return text("f"), nil
		}
		return null, &Error{Code: "22P02", Message: "invalid input syntax for type boolean: \"" + v.s + "\""}
	}
	return v, nil
}

func (ev *evaluator) op(e *eOp, row []value) (value, *Error) {
	l, err := ev.eval(e.l, row)
	if err != nil {
		return null, err
	}
	var r value
	if e.r != nil {
		if r, err = ev.eval(e.r, row); err != nil {
			return null, err
		}
	}
	switch e.op {
	case "not":
		if l.null {
			return null, nil
		}
		return boolValue(l.s == "f"), nil
	case "and", "or":
		lb, rb := l.s == "t", r.s == "t"
		if e.op == "and" {
			if !l.null && !lb || !r.null && !rb {
				return boolValue(false), nil
			}
			if l.null || r.null {
				return null, nil
			}
			return boolValue(true), nil
		}
		if !l.null && lb || !r.null && rb {
			return boolValue(true), nil
		}
		if l.null || r.null {
			return null, nil
		}
		return boolValue(false), nil
	}
	if l.null || e.r != nil && r.null {
		return null, nil
	}
	switch e.op {
	case "||":
		return text(l.s + r.s), nil
	case "neg":
		n, _ := strconv.ParseInt(l.s, 10, 64)
		return text(strconv.FormatInt(-n, 10)), nil
	case "+", "-", "*", "/":
		a, _ := strconv.ParseInt(l.s, 10, 64)
		b, _ := strconv.ParseInt(r.s, 10, 64)
		var n int64
		switch e.op {
		case "+":
			n = a + b
		case "-":
			n = a - b
		case "*":
			n = a * b
		case "/":
			if b == 0 {
				return null, &Error{Code: "22012", Message: "division by zero"}
			}
			n = a / b
		}
		if e.typ == tyInt4 && (n > 1<<31-1 || n < -1<<31) {
			return null, &Error{Code: "22003", Message: "integer out of range"}
		}
		return text(strconv.FormatInt(n, 10)), nil
	}
	c := compare(l, r)
	switch e.op {
	case "=":
		return boolValue(c == 0), nil
	case "<>":
		return boolValue(c != 0), nil
	case "<":
		return boolValue(c < 0), nil
	case ">":
		return boolValue(c > 0), nil
	case "<=":
		return boolValue(c <= 0), nil
	case ">=":
		return boolValue(c >= 0), nil
	}
	return null, &Error{Code: "pgmodel", Message: "pgmodel: unknown operator " + e.op}
}

// compare orders two values: numerically when both are integers.
func compare(a, b value) int {
	x, err1 := strconv.ParseInt(a.s, 10, 64)
	y, err2 := strconv.ParseInt(b.s, 10, 64)
	if err1 == nil && err2 == nil {
		switch {
		case x < y:
			return -1
		case x > y:
			return 1
		}
		return 0
	}
	return strings.Compare(a.s, b.s)
}

func (ev *evaluator) call(e *eFunc, row []value) (value, *Error) {
	if e.star {
		return text(strconv.FormatInt(ev.count, 10)), nil
	}
	args := make([]value, len(e.args))
	for i, a := range e.args {
		v, err := ev.eval(a, row)
		if err != nil {
			return null, err
		}
		args[i] = v
	}
	b := ev.b
	switch e.name {
	case "current_setting":
		if args[0].null || len(args) == 2 && args[1].null {
			return null, nil
		}
		missingOK := len(args) == 2 && args[1].s == "t"
		v, ok, err := b.showSetting(args[0].s)
		if err != nil && !missingOK {
			return null, err
		}
		if !ok {
			return null, nil
		}
		return text(v), nil
	case "set_config":
		if args[0].null {
			return null, &Error{Code: "22004", Message: "SET requires parameter name"}
		}
		local := !args[2].null && args[2].s == "t"
		var v *string
		if !args[1].null {
			v = &args[1].s
		}
		if err := b.setSetting(args[0].s, v, local); err != nil {
			return null, err
		}
		s, _, _ := b.showSetting(args[0].s)
		return text(s), nil
	case "repeat":
		if args[0].null || args[1].null {
			return null, nil
		}
		n, _ := strconv.Atoi(args[1].s)
		if n < 0 {
			n = 0
		}
		return text(strings.Repeat(args[0].s, n)), nil
	case "nullif":
		if !args[0].null && !args[1].null && compare(args[0], args[1]) == 0 {
			return null, nil
		}
		return args[0], nil
	case "coalesce":
		for _, a := range args {
			if !a.null {
				return a, nil
			}
		}
		return null, nil
	case "whoami":
		w := b.whoami()
		return text(recordText(w)), nil
	case "pg_advisory_unlock_all":
		return text(""), nil
	}
	return null, &Error{Code: "pgmodel", Message: "pgmodel: function " + e.name + " not modelled"}
}

// recordText renders a composite value as record_out does.
func recordText(vals []value) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		if v.null {
			continue
		}
		quote := v.s == "" || strings.ContainsAny(v.s, "\"\\(),") || strings.ContainsAny(v.s, " \t\n\r\v\f")
		if !quote {
			b.WriteString(v.s)
			continue
		}
		b.WriteByte('"')
		for j := 0; j < len(v.s); j++ {
			c := v.s[j]
			if c == '"' || c == '\\' {
				b.WriteByte(c)
			}
			b.WriteByte(c)
		}
		b.WriteByte('"')
	}
	b.WriteByte(')')
	return b.String()
}
