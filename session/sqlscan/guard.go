package sqlscan

import (
	"fmt"
	"sort"
	"strings"
)

// Policy is the guard configuration.
//
// The guard only sees the text it is given: functions, views, rules and
// role or database settings already in the database are invisible to it,
// and so is SQL that a function builds at run time.
type Policy struct {
	// ClaimsPrefix protects every setting named it or starting with it and
	// a "." (case-insensitive), e.g. "jwt.claims". "" protects none.
	ClaimsPrefix string
	// ClaimsJSON protects one more setting (case-insensitive), e.g.
	// "request.jwt.claims". "" protects none.
	ClaimsJSON string
	// AllowDo allows DO blocks (their bodies are still scanned). By default
	// they are refused: PL/pgSQL EXECUTE can build any statement.
	AllowDo bool
	// ListStatements allows pg_prepared_statements: in session pooling
	// mode a server connection holds one client's statements only.
	ListStatements bool
}

// Violation says why the guard refused a statement.
type Violation struct {
	Stmt   int    // index into the statements
	Reason string // a sentence for the client
}

func (v *Violation) Error() string { return v.Reason }

const (
	reasonRole           = "SET ROLE is not allowed through pgtoken: the role comes from the token"
	reasonSessionAuth    = "SET SESSION AUTHORIZATION is not allowed through pgtoken: the role comes from the token"
	reasonResetAll       = "RESET ALL is only handled by pgtoken as a query of its own; send it without other statements"
	reasonDiscard        = "DISCARD is only handled by pgtoken as a query of its own; send it without other statements"
	reasonDo             = "DO blocks are not allowed through pgtoken (PL/pgSQL EXECUTE could build any statement; guard.allow_do lets them through)"
	reasonSCS            = "standard_conforming_strings cannot be turned off through pgtoken"
	reasonSetConfigArg   = "set_config is only allowed through pgtoken with a string literal as the setting name"
	reasonSQLText        = "functions that run SQL text are only allowed through pgtoken with a string literal query"
	reasonDynamicSet     = "building a SET statement at run time is not allowed through pgtoken"
	reasonUnterminated   = "unterminated quoted string, quoted identifier, dollar quote or comment"
	reasonNUL            = "a query must not contain a NUL byte"
	reasonUnreadableBody = "a function body pgtoken cannot decode is not allowed"
	reasonReserved       = "names beginning with pgtoken_ are reserved for pgtoken's own statements and portals"
	reasonDynamicSQL     = "a function body that runs SQL built at run time (EXECUTE of anything but one string literal) is not allowed through pgtoken"
	reasonPrepared       = "pg_prepared_statements is not available through pgtoken: it would list the statements of other clients sharing the server connection"
)

// maxBodyDepth bounds how deeply string literals inside function bodies are
// decoded and scanned again.
const maxBodyDepth = 4

// Check returns the first violation in text (already split into stmts by
// Split; an empty stmts is computed), or nil. It refuses, in any spelling (quoted, U&, comments
// between tokens, any case):
//
//   - SET or RESET of role, session_authorization or a protected claims
//     setting, including SET SESSION AUTHORIZATION and SET ROLE NONE;
//   - set_config unless its first argument is one string literal naming
//     another setting (not client_encoding or standard_conforming_strings);
//   - RESET ALL and DISCARD (pgtoken answers them itself when they are a
//     query of their own);
//   - DO blocks, unless AllowDo;
//   - client encodings that can hide ASCII bytes inside characters, and
//     turning standard_conforming_strings off;
//   - in CREATE and ALTER statements, SET or RESET of a protected setting
//     (function SET clauses, ALTER ROLE/DATABASE ... SET);
//   - any ';'-separated segment starting with SET, RESET or DISCARD, even
//     inside parentheses or a BEGIN ATOMIC body;
//   - bodies of CREATE FUNCTION/PROCEDURE (and allowed DO blocks) that
//     mention set_config, role changes, the session authorization or the
//     claims settings (best effort);
//   - functions that run SQL given as text (query_to_xml and friends,
//     ts_stat, ts_rewrite, tablefunc's crosstab and connectby) unless that
//     text is a literal passing the body scan;
//   - unterminated strings, identifiers, dollar quotes and comments, and
//     NUL bytes.
func (p *Policy) Check(text string, stmts []Statement) *Violation {
	if p == nil {
		p = &Policy{}
	}
	if len(stmts) == 0 {
		// Never let a caller's mistake skip the checks.
		stmts = Split(text, nil)
	}
	if i := strings.IndexByte(text, 0); i >= 0 {
		// The server would refuse the message; refuse it here too rather
		// than guess what it means.
		j := 0
		for j < len(stmts)-1 && stmts[j].End <= i {
			j++
		}
		return &Violation{Stmt: j, Reason: reasonNUL}
	}
	for i, st := range stmts {
		if st.Start < 0 || st.End > len(text) || st.Start > st.End {
			return &Violation{Stmt: i, Reason: "internal error: statement out of range"}
		}
		if r := p.checkStatement(text, st); r != "" {
			return &Violation{Stmt: i, Reason: r}
		}
	}
	return nil
}

// checkStatement returns why st must be refused, or "".
func (p *Policy) checkStatement(text string, st Statement) string {
	// Rule: RESET ALL and DISCARD are answered by pgtoken itself, and only
	// when they are a query of their own. A caller that intercepts those
	// queries before calling Check never gets here with them; anywhere
	// else they would reset the token's role and claims, so refuse.
	switch {
	case st.Kind == KindResetAll:
		return reasonResetAll
	case st.Kind == KindDiscard && !harmlessDiscard(st.Name):
		return reasonDiscard
	}
	if st.Flags&FlagUnterminated != 0 {
		return reasonUnterminated
	}
	if st.Kind == KindDo && !p.AllowDo {
		return reasonDo
	}
	switch st.Kind {
	case KindSet, KindSetLocal, KindReset:
		v := verbSet
		if st.Kind == KindReset {
			v = verbReset
		}
		if r := p.protected(st.Name, v); r != "" {
			return r
		}
	}
	return p.walk(text[:st.End], st.Start, st.Kind == KindDo)
}

// protected returns why changing the setting name (with SET or RESET, as v
// says) is refused, or "".
func (p *Policy) protected(name string, v verb) string {
	r := ""
	switch {
	case name == "":
		return ""
	case equalFold(name, "role"):
		r = reasonRole
	case equalFold(name, "session_authorization"):
		r = reasonSessionAuth
	case p.isClaims(name):
		return fmt.Sprintf("changing %s is not allowed through pgtoken: claims come from the token", name)
	default:
		return ""
	}
	if v == verbReset {
		r = "RE" + r
	}
	return r
}

// CheckSetting returns why a client may not give the setting name the value
// value (as a startup parameter or an options -c setting), or "".
func (p *Policy) CheckSetting(name, value string) string {
	if r := p.protected(name, verbSet); r != "" {
		return r
	}
	switch {
	case equalFold(name, "client_encoding"):
		if unsafeEncoding(value) {
			return fmt.Sprintf("client_encoding %q is not allowed through pgtoken: only encodings that never hide ASCII bytes inside characters are", value)
		}
	case equalFold(name, "standard_conforming_strings"):
		if !isTrue(value) {
			return reasonSCS
		}
	}
	return ""
}

// protectedByName returns why set_config of the setting name is refused, or "".
func (p *Policy) protectedByName(name string) string {
	why := ""
	switch {
	case equalFold(name, "role"), equalFold(name, "session_authorization"):
		why = "the role comes from the token"
	case p.isClaims(name):
		why = "claims come from the token"
	case equalFold(name, "client_encoding"), equalFold(name, "standard_conforming_strings"):
		why = "pgtoken relies on its value to read queries"
	default:
		return ""
	}
	return fmt.Sprintf("set_config('%s', ...) is not allowed through pgtoken: %s", name, why)
}

// isClaims reports whether name is a protected claims setting.
func (p *Policy) isClaims(name string) bool {
	prefix := strings.TrimSuffix(p.ClaimsPrefix, ".")
	if prefix != "" && hasPrefixFold(name, prefix) && (len(name) == len(prefix) || name[len(prefix)] == '.') {
		return true
	}
	return p.ClaimsJSON != "" && equalFold(name, p.ClaimsJSON)
}

// walk checks the tokens of one statement, s[pos:]. isDo says the
// statement is a DO block (only walked when AllowDo).
func (p *Policy) walk(s string, pos int, isDo bool) string {
	l := newLexer(s, pos)
	var head [4]token
	for i, c := 0, l; i < len(head); i++ {
		head[i] = c.next()
	}
	createAlter := isKeyword(s, head[0], "create") || isKeyword(s, head[0], "alter")
	routine := isRoutineHead(s, head)
	segStart := true // at the start of a ';'-separated segment
	var ring tokenRing
	var prev, prev2, prev3 token
	for {
		t := l.next()
		if t.kind == tEOF {
			return ""
		}
		if isSelf(s, t, ';') {
			segStart = true
			ring.reset()
			prev3, prev2, prev = prev2, prev, t
			continue
		}
		isSet, isReset := isKeyword(s, t, "set"), isKeyword(s, t, "reset")
		switch {
		case segStart:
			// Rule: every ';'-separated segment that starts with SET,
			// RESET or DISCARD is checked as a statement, even inside
			// parentheses or a BEGIN ATOMIC body, so that a mistake in
			// statement splitting cannot hide one.
			if r := p.segment(l, t); r != "" {
				return r
			}
		case createAlter && (isSet || isReset) && !ring.updateSet(s):
			// Rule: in CREATE and ALTER statements (function SET
			// clauses, ALTER ROLE/DATABASE ... SET, BEGIN ATOMIC
			// bodies), any SET or RESET of a protected setting.
			v := verbSet
			if isReset {
				v = verbReset
			}
			c := l
			f := parseSetting(&c, v)
			if r := p.settingReason(f, v, false); r != "" {
				return r
			}
		}
		segStart = false
		if t.isName() {
			// Rule: no name in any spelling may reach pgtoken's own
			// prepared statements and portals (EXECUTE, EXPLAIN EXECUTE,
			// CREATE TABLE AS EXECUTE, FETCH, CLOSE, DEALLOCATE ...), nor
			// the view that lists every statement on the connection.
			if r := reservedName(l, t); r != "" && (r != reasonPrepared || !p.ListStatements) {
				return r
			}
		}
		if fn, ok := callee(s, prev, prev2, prev3); ok && isSelf(s, t, '(') {
			if r := p.checkCall(l, fn); r != "" {
				return r
			}
		}
		if t.isString() && (isDo || routine && isKeyword(s, prev, "as")) {
			// Rule: the bodies of functions and procedures (the string
			// after AS; BEGIN ATOMIC bodies are tokens, checked above)
			// and of DO blocks when allowed are scanned, best effort.
			c := l
			v, ok := stringValue(&c, t)
			if !ok {
				return reasonUnreadableBody
			}
			if r := p.scanBody(v, 1); r != "" {
				return r
			}
		}
		ring.push(t)
		prev3, prev2, prev = prev2, prev, t
	}
}

// isRoutineHead reports whether head is CREATE [OR REPLACE] FUNCTION|PROCEDURE.
func isRoutineHead(s string, head [4]token) bool {
	if !isKeyword(s, head[0], "create") {
		return false
	}
	i := 1
	if isKeyword(s, head[1], "or") && isKeyword(s, head[2], "replace") {
		i = 3
	}
	return isKeyword(s, head[i], "function") || isKeyword(s, head[i], "procedure")
}

// segment checks a segment starting with token t; l is positioned after t.
func (p *Policy) segment(l lexer, t token) string {
	s := l.s
	switch {
	case isKeyword(s, t, "discard"):
		if n := l.next(); n.kind == tIdent && harmlessDiscard(lowerASCII(s[n.start:n.end])) {
			return ""
		}
		return reasonDiscard
	case isKeyword(s, t, "set"):
		return p.settingReason(parseSetting(&l, verbSet), verbSet, false)
	case isKeyword(s, t, "reset"):
		f := parseSetting(&l, verbReset)
		if f.all {
			return reasonResetAll
		}
		return p.settingReason(f, verbReset, false)
	}
	return ""
}

// settingReason returns why a SET or RESET of f is refused, or "". With
// strict, a SET whose name cannot be read is refused too.
func (p *Policy) settingReason(f setting, v verb, strict bool) string {
	if f.name == "" {
		if strict && !f.all && !f.transaction {
			return reasonDynamicSet
		}
		return ""
	}
	if r := p.protected(f.name, v); r != "" {
		return r
	}
	if v != verbSet {
		return ""
	}
	// Rule: settings that would make this lexer disagree with the server
	// on later queries.
	switch {
	case equalFold(f.name, "client_encoding"):
		val, ok, isDefault := settingValue(f.value)
		if isDefault {
			return ""
		}
		if !ok || unsafeEncoding(val) {
			return fmt.Sprintf("client_encoding %q is not allowed through pgtoken: only encodings that never hide ASCII bytes inside characters are", val)
		}
	case equalFold(f.name, "standard_conforming_strings"):
		val, ok, isDefault := settingValue(f.value)
		if !isDefault && !(ok && isTrue(val)) {
			return reasonSCS
		}
	}
	return ""
}

// settingValue decodes the first token of a SET value.
func settingValue(l lexer) (val string, ok, isDefault bool) {
	t := l.next()
	switch {
	case t.kind == tEOF:
		return "", true, true
	case isKeyword(l.s, t, "default"):
		return "", true, true
	case t.isString():
		val, ok = stringValue(&l, t)
	case t.isName():
		val, ok = identValue(&l, t)
	case t.kind == tNumber:
		val, ok = l.s[t.start:t.end], true
	}
	return val, ok, false
}

// isTrue reports whether the server's boolean parser reads v as true.
func isTrue(v string) bool {
	if v == "" {
		return false
	}
	switch lower(v[0]) {
	case 't':
		return hasPrefixFold("true", v)
	case 'y':
		return hasPrefixFold("yes", v)
	case 'o':
		return equalFold(v, "on")
	case '1':
		return v == "1"
	}
	return false
}

// unsafeEncoding reports whether name is a client encoding whose multibyte
// characters can contain ASCII bytes (the server normalizes names by
// dropping non-alphanumerics and folding case).
func unsafeEncoding(name string) bool {
	var b [32]byte
	n := 0
	for i := 0; i < len(name); i++ {
		c := lower(name[i])
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			if n == len(b) {
				return false
			}
			b[n] = c
			n++
		}
	}
	switch string(b[:n]) {
	case "sjis", "shiftjis", "mskanji", "shiftjis2004", "big5", "gbk", "uhc", "gb18030", "johab",
		"win932", "win936", "win949", "win950", "windows932", "windows936", "windows949", "windows950":
		return true
	}
	return false
}

// checkCall checks a call of the function named by token fn; l is
// positioned just after the call's '('.
func (p *Policy) checkCall(l lexer, fn token) string {
	s := l.s
	if fn.end-fn.start < 6 {
		return ""
	}
	switch {
	case nameIs(s, fn, "set_config"):
		// Rule: set_config only with a literal, harmless setting name.
		a := scanArgs(l, 0)
		if !a.single || a.truncated || !a.first.isString() {
			return reasonSetConfigArg
		}
		c := newLexer(s, a.first.end)
		name, ok := stringValue(&c, a.first)
		if !ok {
			return reasonSetConfigArg
		}
		if r := p.protectedByName(name); r != "" {
			return r
		}
	case nameIs(s, fn, "query_to_xml"), nameIs(s, fn, "query_to_xmlschema"),
		nameIs(s, fn, "query_to_xml_and_xmlschema"), nameIs(s, fn, "ts_stat"):
		return p.checkSQLArg(l, 0)
	case nameIs(s, fn, "ts_rewrite"):
		// ts_rewrite(query, select_text) runs its second argument;
		// the three-argument form does not.
		if a := scanArgs(l, 1); a.truncated || a.first.kind != tEOF && !a.more {
			return p.checkSQLArg(l, 1)
		}
	case nameIs(s, fn, "crosstab"), nameIs(s, fn, "crosstab2"), nameIs(s, fn, "crosstab3"), nameIs(s, fn, "crosstab4"):
		// tablefunc: crosstab(source_sql [, category_sql | count]).
		if r := p.checkSQLArg(l, 0); r != "" {
			return r
		}
		if a := scanArgs(l, 1); a.truncated || a.first.kind != tEOF && !(a.single && a.first.kind == tNumber) {
			return p.checkSQLArg(l, 1)
		}
	case nameIs(s, fn, "connectby"):
		// tablefunc: builds a query from its text arguments.
		for k := 0; ; k++ {
			a := scanArgs(l, k)
			if a.truncated {
				return reasonSQLText
			}
			if a.first.kind == tEOF {
				break
			}
			if a.single && (a.first.kind == tNumber || isKeyword(s, a.first, "true") || isKeyword(s, a.first, "false")) {
				continue
			}
			if r := p.checkSQLArg(l, k); r != "" {
				return r
			}
		}
	}
	return ""
}

// checkSQLArg checks argument k of a call of a function that runs it as
// SQL: it must be a string literal, scanned like a function body.
func (p *Policy) checkSQLArg(l lexer, k int) string {
	a := scanArgs(l, k)
	if !a.single || a.truncated || !a.first.isString() {
		return reasonSQLText
	}
	c := newLexer(l.s, a.first.end)
	v, ok := stringValue(&c, a.first)
	if !ok {
		return reasonSQLText
	}
	return p.scanBody(v, 1)
}

// scanBody looks for identity changes in b, the decoded contents of a
// string literal that may be run as code (a function body). It is best
// effort: it reads b both as SQL tokens, which sees through quoting, and
// as plain text, which also covers bodies in other languages.
func (p *Policy) scanBody(b string, depth int) string {
	var updateSets []int
	l := newLexer(b, 0)
	segStart := true
	var ring tokenRing
	for {
		t := l.next()
		if t.kind == tEOF {
			break
		}
		if isSelf(b, t, ';') {
			segStart = true
			ring.reset()
			continue
		}
		set, reset := isKeyword(b, t, "set"), isKeyword(b, t, "reset")
		if t.isName() {
			if r := reservedName(l, t); r != "" {
				return "in a function body: " + r
			}
		}
		if isKeyword(b, t, "execute") && !staticExecute(l) {
			return reasonDynamicSQL
		}
		switch {
		case t.isName() && nameIs(b, t, "set_config"):
			return "a function body that calls set_config is not allowed through pgtoken"
		case (set || reset) && !segStart && ring.updateSet(b):
			updateSets = append(updateSets, t.start)
		case set || reset:
			v := verbSet
			if reset {
				v = verbReset
			}
			c := l
			if r := p.settingReason(parseSetting(&c, v), v, segStart); r != "" {
				return "in a function body: " + r
			}
		case (t.isString() || t.kind == tQIdent) && depth < maxBodyDepth:
			c := l
			var v string
			var ok bool
			if t.kind == tQIdent {
				if !t.unterminated {
					v, ok = b[t.start+1:t.end-1], true
				}
			} else if v, ok = stringValue(&c, t); !ok {
				v, ok = b[t.start:t.end], true // scan the raw text instead
			}
			if ok {
				if r := p.scanBody(v, depth+1); r != "" {
					return r
				}
			}
		}
		segStart = false
		ring.push(t)
	}
	return p.scanText(b, updateSets)
}

// scanText searches b as plain text, case-insensitively.
func (p *Policy) scanText(b string, updateSets []int) string {
	if indexFold(b, "set_config") >= 0 {
		return "a function body that calls set_config is not allowed through pgtoken"
	}
	if indexFold(b, "session_authorization") >= 0 || wordsAt(b, "session", "authorization") {
		return "a function body that changes the session authorization is not allowed through pgtoken"
	}
	if prefix := strings.TrimSuffix(p.ClaimsPrefix, "."); prefix != "" && indexFold(b, lowerASCII(prefix)) >= 0 {
		return fmt.Sprintf("a function body that mentions %s is not allowed through pgtoken", prefix)
	}
	if p.ClaimsJSON != "" && indexFold(b, lowerASCII(p.ClaimsJSON)) >= 0 {
		return fmt.Sprintf("a function body that mentions %s is not allowed through pgtoken", p.ClaimsJSON)
	}
	// SET [LOCAL|SESSION] ROLE and RESET ROLE, unless the token view saw
	// that SET as the SET of an UPDATE.
	for i := 0; i+3 <= len(b); i++ {
		if !hasPrefixFold(b[i:], "set") {
			continue
		}
		start, isReset := i, false
		if i >= 2 && hasPrefixFold(b[i-2:], "re") && wordStart(b, i-2) {
			start, isReset = i-2, true
		} else if !wordStart(b, i) {
			continue
		}
		j := i + 3
		if !isReset {
			j = skipWord(b, j, "local")
			j = skipWord(b, j, "session")
		}
		j = skipSpace(b, j)
		if j < len(b) && b[j] == '"' {
			j++
		}
		if !hasPrefixFold(b[j:], "role") || j+4 < len(b) && isWordByte(b[j+4]) {
			continue
		}
		if k := sort.SearchInts(updateSets, start); !isReset && k < len(updateSets) && updateSets[k] == start {
			continue
		}
		return "a function body that changes the role is not allowed through pgtoken"
	}
	return ""
}

// wordsAt reports whether b has word a followed by whitespace and word c.
func wordsAt(b, a, c string) bool {
	for i := 0; i+len(a) <= len(b); i++ {
		if hasPrefixFold(b[i:], a) && wordStart(b, i) {
			j := skipSpace(b, i+len(a))
			if j > i+len(a) && hasPrefixFold(b[j:], c) {
				return true
			}
		}
	}
	return false
}

// skipWord skips whitespace and then word w (if there) at j.
func skipWord(b string, j int, w string) int {
	k := skipSpace(b, j)
	if k > j && hasPrefixFold(b[k:], w) && !(k+len(w) < len(b) && isWordByte(b[k+len(w)])) {
		return k + len(w)
	}
	return j
}

func skipSpace(b string, j int) int {
	for j < len(b) && isSpace(b[j]) {
		j++
	}
	return j
}

func wordStart(b string, i int) bool { return i == 0 || !isWordByte(b[i-1]) }

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// tokenRing remembers the last tokens of a segment, to recognize the SET
// of UPDATE ... SET.
type tokenRing struct {
	t [12]token
	n int // tokens pushed since the segment started
}

func (r *tokenRing) push(t token) { r.t[r.n%len(r.t)] = t; r.n++ }
func (r *tokenRing) reset()       { r.n = 0 }

// updateSet reports whether a SET following the remembered tokens is the
// SET of an UPDATE: "UPDATE [ONLY] name[.name...] [*] [[AS] alias] SET" or
// "DO UPDATE SET" (ON CONFLICT, rules) or "THEN UPDATE SET" (MERGE), where
// the UPDATE starts a statement.
func (r *tokenRing) updateSet(s string) bool {
	m := r.n
	if m > len(r.t) {
		m = len(r.t)
	}
	var a [12]token
	for i := 0; i < m; i++ {
		a[i] = r.t[(r.n-m+i)%len(r.t)]
	}
	for k := m - 1; k >= 0; k-- {
		if !isKeyword(s, a[k], "update") {
			continue
		}
		var before bool
		if k == 0 {
			before = r.n <= len(r.t)
		} else {
			b := a[k-1]
			before = isSelf(s, b, '(') || isKeyword(s, b, "atomic") || isKeyword(s, b, "instead") ||
				isKeyword(s, b, "also") || isKeyword(s, b, "do") || isKeyword(s, b, "then")
		}
		rest := a[k+1 : m]
		if before && (len(rest) == 0 || matchRelation(s, rest) ||
			isKeyword(s, rest[0], "only") && matchRelation(s, rest[1:])) {
			return true
		}
	}
	return false
}

// matchRelation reports whether r is exactly "name[.name...] [*] [[AS] alias]".
func matchRelation(s string, r []token) bool {
	if len(r) == 0 || !r[0].isName() {
		return false
	}
	i := 1
	for i+1 < len(r) && isSelf(s, r[i], '.') && r[i+1].isName() {
		i += 2
	}
	if i < len(r) && r[i].kind == tOp && s[r[i].start:r[i].end] == "*" {
		i++
	}
	if i < len(r) && isKeyword(s, r[i], "as") {
		i++
		if i >= len(r) || !r[i].isName() {
			return false
		}
		i++
	} else if i < len(r) && r[i].isName() {
		i++
	}
	return i == len(r)
}

// reservedName returns why name token t must be refused, or "". Plain
// identifiers are checked without decoding (the common case costs a length
// check); quoted and U& ones are decoded first.
func reservedName(l lexer, t token) string {
	s := l.s
	v, fold := s[t.start:t.end], true // an unquoted name is folded to lower case
	if t.kind != tIdent {
		d, ok := identValue(&l, t)
		if !ok {
			return ""
		}
		v, fold = d, false
	}
	if len(v) < len("pgtoken_") {
		return ""
	}
	same := func(a, b string) bool { return a == b || fold && equalFold(a, b) }
	switch {
	case equalFold(v[:8], "pgtoken_"):
		return reasonReserved
	case same(v, "pg_prepared_statements"), same(v, "pg_prepared_statement"):
		return reasonPrepared
	}
	return ""
}

// staticExecute reports whether the EXECUTE just read (l is positioned
// after it) runs fixed text: PL/pgSQL's EXECUTE of one string literal
// (followed by INTO, USING or the end of the statement), or a trigger's
// EXECUTE FUNCTION|PROCEDURE. Anything else builds its statement at run
// time, where the guard cannot see it.
func staticExecute(l lexer) bool {
	s := l.s
	t := l.next()
	if isKeyword(s, t, "function") || isKeyword(s, t, "procedure") {
		return true
	}
	if !t.isString() {
		return false
	}
	n := l.next()
	return n.kind == tEOF || isSelf(s, n, ';') || isKeyword(s, n, "into") || isKeyword(s, n, "using")
}

// harmlessDiscard reports whether DISCARD of what (as Statement.Name has
// it) leaves the identity alone: DISCARD TEMP, SEQUENCES and PLANS may run
// anywhere; DISCARD ALL resets the role and settings.
func harmlessDiscard(what string) bool {
	switch what {
	case "temp", "temporary", "sequences", "plans":
		return true
	}
	return false
}
