package sqlscan

// Kind says what a statement is, from its leading keywords.
type Kind uint8

const (
	KindOther              Kind = iota
	KindBegin                   // BEGIN [WORK|TRANSACTION] [modes], START TRANSACTION [modes] (not BEGIN ATOMIC)
	KindSetTransaction          // SET [LOCAL|SESSION] TRANSACTION ..., SET TRANSACTION SNAPSHOT
	KindCommit                  // COMMIT, END [WORK|TRANSACTION] [AND [NO] CHAIN]
	KindRollback                // ROLLBACK, ABORT [WORK|TRANSACTION] [AND [NO] CHAIN], not ROLLBACK TO
	KindRollbackTo              // ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] x
	KindSavepoint               // SAVEPOINT x
	KindRelease                 // RELEASE [SAVEPOINT] x
	KindPrepareTransaction      // PREPARE TRANSACTION 'x'
	KindCall                    // CALL ...
	KindDo                      // DO ...
	KindSet                     // SET [SESSION] name {TO|=} ..., and the special forms (see Statement.Name)
	KindSetLocal                // SET LOCAL ...
	KindReset                   // RESET name
	KindResetAll                // RESET ALL
	KindShow                    // SHOW name, SHOW ALL
	KindDiscard                 // DISCARD ALL|PLANS|SEQUENCES|TEMP|TEMPORARY
	KindListen                  // LISTEN x
	KindUnlisten                // UNLISTEN x|*
	KindPrepare                 // PREPARE name [(types)] AS stmt
	KindExecute                 // EXECUTE name [(args)]
	KindDeallocate              // DEALLOCATE [PREPARE] name|ALL
	KindDeclare                 // DECLARE cursor ...
	KindCopy                    // COPY ...
	KindNoTxBlock               // a statement the server refuses inside a transaction block (VACUUM, CREATE DATABASE, ...)
)

// Flags are facts about a statement found anywhere in it.
type Flags uint16

const (
	FlagChain            Flags = 1 << iota // COMMIT/ROLLBACK ... AND CHAIN
	FlagSetConfig                          // calls set_config
	FlagSessionSetConfig                   // calls set_config with is_local not the literal true
	FlagAdvisoryLock                       // calls a session-level advisory lock function
	FlagWithHold                           // DECLARE ... WITH HOLD
	FlagTempObject                         // creates a temporary object that outlives the transaction
	FlagUnterminated                       // the text ends inside a string, quoted identifier, dollar quote or comment
)

// Statement is one statement of a Query string.
//
// text[Start:End] runs from the first token to the end of the last token:
// whitespace and comments around the statement and the terminating ';' are
// excluded. A statement whose text ends inside a comment runs to the end of
// the text (and may have no token at all); it has FlagUnterminated.
type Statement struct {
	Start, End int
	Kind       Kind
	Flags      Flags
	// Name is, for KindSet, KindSetLocal, KindReset and KindShow, the
	// setting's name: identifier parts decoded (unquoted parts lowercased,
	// quoted ones kept as written), truncated like the server does and
	// joined with "."; special forms get the setting they change ("role",
	// "session_authorization", "timezone", "client_encoding",
	// "search_path", "xmloption", "transaction_isolation", "all" for SHOW
	// ALL, "session characteristics"). Compare it case-insensitively.
	// For KindPrepare, KindExecute, KindDeallocate, KindListen and
	// KindUnlisten it is the object name ("" for DEALLOCATE ALL, "*" for
	// UNLISTEN *); for KindDiscard "all", "plans", "sequences" or "temp".
	Name string
	// Value is, for KindSet and KindSetLocal, the source text after TO or
	// "=" (or after the special form's keywords), for messages only.
	Value string
}

// headLen is how many leading tokens of a statement Split keeps for
// classification.
const headLen = 8

// stmtState is what Split tracks about the statement being read.
type stmtState struct {
	n           int // tokens so far
	start, end  int
	head        [headLen]token
	prev, prev2 token
	prev3       token
	paren       int // parenthesis depth
	atomic      int // depth inside BEGIN ATOMIC ... END (and CASE ... END within)
	// bodyHead holds the first tokens of the current statement inside a
	// BEGIN ATOMIC body: only a CREATE FUNCTION there opens another body.
	bodyHead [4]token
	bodyN    int
	flags    Flags
	// names are the first two depth-0 name tokens after the first token.
	names        [2]token
	nNames       int
	sawFor       bool // DECLARE: FOR seen at depth 0
	concurrently bool // CONCURRENTLY seen
	detach       bool // DETACH seen
	onCommitDrop bool // ON COMMIT DROP seen
	pgTempDot    bool // pg_temp. seen
	intoTemp     bool // INTO [LOCAL|GLOBAL] TEMP|TEMPORARY seen at depth 0
}

// Split appends the statements of text to dst and returns it.
//
// It cuts text where the PostgreSQL 15 server does: at ';' outside quotes,
// comments, parentheses and the BEGIN ATOMIC ... END body of CREATE
// FUNCTION/PROCEDURE, dropping empty statements, so that a Query that runs
// without error produces one CommandComplete per statement. It never
// panics. It allocates only to grow dst, for Name strings that differ from
// the source text, and to decode a U&"..." function name.
func Split(text string, dst []Statement) []Statement {
	l := newLexer(text, 0)
	var st stmtState
	for {
		t := l.next()
		if t.kind == tEOF {
			break
		}
		if t.kind == tSelf && text[t.start] == ';' && st.paren == 0 && st.atomic == 0 {
			if st.n > 0 {
				dst = append(dst, st.finish(text))
			}
			st = stmtState{}
			continue
		}
		st.add(&l, t)
	}
	switch {
	case l.badComment >= 0 && st.n == 0:
		dst = append(dst, Statement{Start: l.badComment, End: len(text), Flags: FlagUnterminated})
	case st.n > 0:
		if l.badComment >= 0 {
			st.flags |= FlagUnterminated
			st.end = len(text)
		}
		dst = append(dst, st.finish(text))
	}
	return dst
}

// add feeds token t to the statement; l is positioned just after t.
func (st *stmtState) add(l *lexer, t token) {
	s := l.s
	if st.n == 0 {
		st.start = t.start
	}
	if st.n < headLen {
		st.head[st.n] = t
	}
	st.n++
	st.end = t.end
	if t.unterminated {
		st.flags |= FlagUnterminated
	}
	if st.atomic > 0 {
		if st.bodyN < len(st.bodyHead) {
			st.bodyHead[st.bodyN] = t
		}
		st.bodyN++
	}
	switch t.kind {
	case tSelf:
		switch s[t.start] {
		case ';':
			// Only reached inside parentheses or a BEGIN ATOMIC body.
			if st.paren == 0 {
				st.bodyN = 0
			}
		case '(':
			if fn, ok := callee(s, st.prev, st.prev2, st.prev3); ok {
				st.call(l, fn)
			}
			st.paren++
		case ')':
			if st.paren > 0 {
				st.paren--
			}
		case '.':
			if isTempSchema(l, st.prev) {
				st.pgTempDot = true
			}
		}
	case tIdent:
		st.word(s, t)
	}
	if st.paren == 0 && st.n > 1 && t.isName() && st.nNames < len(st.names) {
		st.names[st.nNames] = t
		st.nNames++
	}
	st.prev3, st.prev2, st.prev = st.prev2, st.prev, t
}

// callee returns the function name token before a '(' given the three
// tokens before it (newest first): a name, or a U& name with its UESCAPE
// clause.
func callee(s string, p1, p2, p3 token) (token, bool) {
	switch {
	case p1.isName():
		return p1, true
	case p1.isString() && isKeyword(s, p2, "uescape") && p3.kind == tUIdent:
		return p3, true
	}
	return token{}, false
}

// word handles an unquoted word.
func (st *stmtState) word(s string, t token) {
	w := s[t.start:t.end]
	if len(w) < 3 || len(w) > 12 {
		return // no word below is shorter or longer
	}
	switch lower(w[0]) {
	case 'a':
		// BEGIN ATOMIC opens the body of CREATE FUNCTION|PROCEDURE. Inside
		// a body, "begin atomic" may be a column and its alias; only a
		// CREATE FUNCTION statement there can open another body.
		if equalFold(w, "atomic") && st.paren == 0 && isKeyword(s, st.prev, "begin") && st.isRoutine(s) &&
			(st.atomic == 0 || st.bodyN >= 3 && isRoutineHead(s, st.bodyHead)) {
			st.atomic++
			st.bodyN = 0
		}
	case 'c':
		switch {
		case equalFold(w, "case"):
			if st.atomic > 0 {
				st.atomic++
			}
		case equalFold(w, "concurrently"):
			st.concurrently = true
		}
	case 'd':
		switch {
		case equalFold(w, "drop"):
			if st.paren == 0 && isKeyword(s, st.prev, "commit") && isKeyword(s, st.prev2, "on") {
				st.onCommitDrop = true
			}
		case equalFold(w, "detach"):
			st.detach = true
		}
	case 'e':
		if equalFold(w, "end") && st.atomic > 0 {
			st.atomic--
		}
	case 'f':
		if equalFold(w, "for") && st.paren == 0 {
			st.sawFor = true
		}
	case 'h':
		if equalFold(w, "hold") && !st.sawFor && isKeyword(s, st.prev, "with") && isKeyword(s, st.head[0], "declare") {
			st.flags |= FlagWithHold
		}
	case 't':
		if st.paren == 0 && (equalFold(w, "temp") || equalFold(w, "temporary")) {
			p := st.prev
			if isKeyword(s, p, "local") || isKeyword(s, p, "global") {
				p = st.prev2
			}
			if isKeyword(s, p, "into") {
				st.intoTemp = true
			}
		}
	}
}

// isRoutine reports whether the statement starts with
// CREATE [OR REPLACE] FUNCTION|PROCEDURE.
func (st *stmtState) isRoutine(s string) bool {
	return st.n >= 3 && isRoutineHead(s, [4]token(st.head[:4]))
}

// call handles a '(' after the name token fn; l is positioned after '('.
func (st *stmtState) call(l *lexer, fn token) {
	s := l.s
	switch {
	case nameIs(s, fn, "set_config"):
		st.flags |= FlagSetConfig
		a := scanArgs(*l, 2)
		if !(a.single && !a.truncated && isKeyword(s, a.first, "true")) || a.named {
			st.flags |= FlagSessionSetConfig
		}
	case nameIs(s, fn, "pg_advisory_lock"), nameIs(s, fn, "pg_advisory_lock_shared"),
		nameIs(s, fn, "pg_try_advisory_lock"), nameIs(s, fn, "pg_try_advisory_lock_shared"):
		st.flags |= FlagAdvisoryLock
	}
}

// nameIs reports whether name token t is want (lower case), comparing
// case-insensitively whether or not t is quoted.
func nameIs(s string, t token, want string) bool {
	switch t.kind {
	case tIdent:
		return equalFold(s[t.start:t.end], want)
	case tQIdent:
		return !t.unterminated && equalFold(s[t.start+1:t.end-1], want)
	case tUIdent:
		l := newLexer(s, t.end)
		v, ok := identValue(&l, t)
		return ok && equalFold(v, want)
	}
	return false
}

// argInfo describes one argument of a function call.
type argInfo struct {
	first     token // its first token (tEOF if there is no such argument)
	single    bool  // it is exactly one token, or one U& string with its UESCAPE clause
	named     bool  // named notation (=>) was seen up to the end of this argument
	more      bool  // another argument follows it
	truncated bool  // the scan gave up before the end of this argument
}

// maxArgTokens bounds the tokens scanArgs reads, so that nested calls cost
// linear time. Callers treat a truncated scan as "unknown".
const maxArgTokens = 256

// scanArgs describes argument k (0-based) of a call; l is positioned just
// after the call's '('. It stops at the end of that argument.
func scanArgs(l lexer, k int) argInfo {
	s := l.s
	var a argInfo
	depth, idx, count := 0, 0, 0
	var toks [3]token
scan:
	for steps := 0; ; steps++ {
		t := l.next()
		if t.kind == tEOF || steps == maxArgTokens {
			a.truncated = true
			break
		}
		if t.kind == tSelf {
			switch c := s[t.start]; {
			case c == '(' || c == '[':
				depth++
			case c == ')' || c == ']':
				depth--
				if depth < 0 {
					break scan // the end of the call
				}
			case c == ';':
				a.truncated = true // not inside a call after all
				break scan
			case c == ',' && depth == 0:
				if idx == k {
					a.more = true
					break scan
				}
				idx++
				continue
			}
		}
		if t.kind == tOp && s[t.start:t.end] == "=>" {
			a.named = true
		}
		if idx == k {
			if count < len(toks) {
				toks[count] = t
			}
			count++
			if count > len(toks) {
				break // not a single literal; nothing more to learn
			}
		}
	}
	if count > 0 {
		a.first = toks[0]
		a.single = count == 1 ||
			count == 3 && toks[0].kind == tUString && isKeyword(s, toks[1], "uescape") && toks[2].isString()
	}
	return a
}

// finish classifies the statement.
func (st *stmtState) finish(s string) Statement {
	r := Statement{Start: st.start, End: st.end, Flags: st.flags}
	if st.n == 0 {
		return r
	}
	h := &st.head
	kw := func(i int, w string) bool { return i < st.n && i < headLen && isKeyword(s, h[i], w) }
	// sub reads the rest of the statement from after head token i.
	sub := func(i int) lexer { return newLexer(s[:st.end], h[i].end) }
	w := s[h[0].start:h[0].end]
	// The first word, lowercased in a stack buffer (no allocation).
	var buf [12]byte
	key := buf[:0]
	if h[0].kind == tIdent && len(w) <= len(buf) {
		for i := 0; i < len(w); i++ {
			key = append(key, lower(w[i]))
		}
	}
	switch string(key) {
	case "begin":
		if !kw(1, "atomic") {
			r.Kind = KindBegin
		}
	case "start":
		if kw(1, "transaction") {
			r.Kind = KindBegin
		}
	case "set":
		l := sub(0)
		f := parseSetting(&l, verbSet)
		switch {
		case f.transaction:
			r.Kind = KindSetTransaction
		case f.local:
			r.Kind = KindSetLocal
		default:
			r.Kind = KindSet
		}
		if r.Kind != KindSetTransaction {
			r.Name = f.name
			if f.valuePos >= 0 {
				r.Value = s[f.valuePos:st.end]
			}
		}
	case "reset":
		l := sub(0)
		f := parseSetting(&l, verbReset)
		r.Kind, r.Name = KindReset, f.name
		if f.all {
			r.Kind, r.Name = KindResetAll, ""
		}
	case "show":
		l := sub(0)
		f := parseSetting(&l, verbShow)
		r.Kind, r.Name = KindShow, f.name
		if f.all {
			r.Name = "all"
		}
	case "commit", "end":
		r.Kind = KindCommit
		if kw(1, "prepared") && w[0]|0x20 == 'c' {
			r.Kind = KindNoTxBlock
		} else if st.chain(s) {
			r.Flags |= FlagChain
		}
	case "abort", "rollback":
		r.Kind = KindRollback
		i := 1
		if kw(1, "work") || kw(1, "transaction") {
			i = 2
		}
		switch {
		case kw(1, "prepared") && w[0]|0x20 == 'r':
			r.Kind = KindNoTxBlock
		case kw(i, "to") && w[0]|0x20 == 'r':
			r.Kind = KindRollbackTo
		case st.chain(s):
			r.Flags |= FlagChain
		}
	case "savepoint":
		r.Kind = KindSavepoint
	case "release":
		r.Kind = KindRelease
	case "prepare":
		if kw(1, "transaction") && st.n > 2 && h[2].isString() {
			r.Kind = KindPrepareTransaction
		} else {
			r.Kind = KindPrepare
			r.Name = st.objectName(s, 1)
		}
	case "call":
		r.Kind = KindCall
	case "do":
		r.Kind = KindDo
	case "discard":
		r.Kind = KindDiscard
		if st.n > 1 && h[1].kind == tIdent {
			switch n := lowerASCII(s[h[1].start:h[1].end]); n {
			case "all", "plans", "sequences", "temp":
				r.Name = n
			case "temporary":
				r.Name = "temp"
			}
		}
	case "listen":
		r.Kind = KindListen
		r.Name = st.objectName(s, 1)
	case "unlisten":
		r.Kind = KindUnlisten
		if st.n > 1 && h[1].kind == tOp && s[h[1].start:h[1].end] == "*" {
			r.Name = "*"
		} else {
			r.Name = st.objectName(s, 1)
		}
	case "execute":
		r.Kind = KindExecute
		r.Name = st.objectName(s, 1)
	case "deallocate":
		r.Kind = KindDeallocate
		i := 1
		if kw(1, "prepare") && st.n > 2 {
			i = 2
		}
		if !kw(i, "all") {
			r.Name = st.objectName(s, i)
		}
	case "declare":
		r.Kind = KindDeclare
	case "copy":
		r.Kind = KindCopy
	case "vacuum":
		r.Kind = KindNoTxBlock
	case "cluster":
		// CLUSTER without a table name reclusters every table.
		n := st.names[0]
		if st.nNames == 0 || st.nNames == 1 && isKeyword(s, n, "verbose") {
			r.Kind = KindNoTxBlock
		}
	case "reindex":
		n := st.names[0]
		if st.concurrently || isKeyword(s, n, "system") || isKeyword(s, n, "database") || isKeyword(s, n, "schema") {
			r.Kind = KindNoTxBlock
		}
	case "create":
		i := 1
		if kw(1, "or") && kw(2, "replace") {
			i = 3
		}
		switch {
		case kw(1, "database"), kw(1, "tablespace"), kw(1, "subscription"):
			r.Kind = KindNoTxBlock
		case kw(1, "index") && kw(2, "concurrently"), kw(1, "unique") && kw(2, "index") && kw(3, "concurrently"):
			r.Kind = KindNoTxBlock
		}
		if kw(i, "global") || kw(i, "local") {
			i++
		}
		if (kw(i, "temp") || kw(i, "temporary")) && !(kw(i+1, "table") && st.onCommitDrop) {
			if kw(i+1, "table") || kw(i+1, "sequence") || kw(i+1, "view") || kw(i+1, "recursive") {
				r.Flags |= FlagTempObject
			}
		}
		if st.pgTempDot {
			r.Flags |= FlagTempObject
		}
	case "drop":
		switch {
		case kw(1, "database"), kw(1, "tablespace"), kw(1, "subscription"):
			r.Kind = KindNoTxBlock
		case kw(1, "index") && kw(2, "concurrently"):
			r.Kind = KindNoTxBlock
		}
	case "alter":
		switch {
		case kw(1, "system"), kw(1, "subscription"):
			r.Kind = KindNoTxBlock
		case kw(1, "database") && kw(3, "set") && kw(4, "tablespace"):
			r.Kind = KindNoTxBlock
		case kw(1, "table") && st.detach && st.concurrently:
			r.Kind = KindNoTxBlock
		}
	case "select", "with":
		if st.intoTemp {
			r.Flags |= FlagTempObject
		}
	}
	return r
}

// chain reports whether a COMMIT/ROLLBACK/END/ABORT ends in AND CHAIN.
func (st *stmtState) chain(s string) bool {
	n := st.n
	if n > headLen {
		return false
	}
	return n >= 3 && isKeyword(s, st.head[n-1], "chain") && isKeyword(s, st.head[n-2], "and")
}

// objectName returns the decoded name at head token i, or "".
func (st *stmtState) objectName(s string, i int) string {
	if i >= st.n || i >= headLen || !st.head[i].isName() {
		return ""
	}
	l := newLexer(s[:st.end], st.head[i].end)
	v, _ := identValue(&l, st.head[i])
	return v
}

// verb is the command a setting name follows.
type verb uint8

const (
	verbSet verb = iota
	verbReset
	verbShow
)

// setting is what parseSetting found after SET, RESET or SHOW.
type setting struct {
	name        string // normalized name; "" if none could be read
	local       bool   // SET LOCAL
	all         bool   // RESET ALL, SHOW ALL
	transaction bool   // SET [LOCAL|SESSION] TRANSACTION ...
	valuePos    int    // where the value starts (SET), or -1
	value       lexer  // positioned at the value (SET)
}

// parseSetting reads what follows a SET, RESET or SHOW keyword, following
// the server's grammar (VariableSetStmt, VariableResetStmt,
// VariableShowStmt); l is positioned just after the keyword.
func parseSetting(l *lexer, v verb) setting {
	s := l.s
	f := setting{valuePos: -1}
	// peek returns the token after the current position without moving.
	peek := func() token { c := *l; return c.next() }
	// named reports whether a word is used as a plain setting name here:
	// followed by TO, = or '.' rather than by its special form.
	named := func() bool {
		n := peek()
		return isKeyword(s, n, "to") || isEquals(s, n) || isSelf(s, n, '.')
	}
	t := l.next()
	if v == verbSet && (isKeyword(s, t, "local") || isKeyword(s, t, "session")) {
		n := peek()
		special := isKeyword(s, t, "session") && (isKeyword(s, n, "authorization") || isKeyword(s, n, "characteristics"))
		if !special && !named() {
			f.local = isKeyword(s, t, "local")
			t = l.next()
		}
	}
	setValue := func() {
		c := *l
		if n := c.next(); n.kind != tEOF {
			f.valuePos = n.start
		}
		f.value = *l
	}
	switch {
	case t.kind != tIdent:
	case v != verbSet && isKeyword(s, t, "all"):
		f.all = true
		return f
	case isKeyword(s, t, "session") && isKeyword(s, peek(), "authorization"):
		l.next()
		f.name = "session_authorization"
		setValue()
		return f
	case v == verbSet && isKeyword(s, t, "session") && isKeyword(s, peek(), "characteristics"):
		f.name = "session characteristics"
		return f
	case isKeyword(s, t, "time") && isKeyword(s, peek(), "zone"):
		l.next()
		f.name = "timezone"
		setValue()
		return f
	case isKeyword(s, t, "transaction") && !named():
		if v == verbSet {
			f.transaction = true
		} else {
			f.name = "transaction_isolation"
		}
		return f
	case v == verbSet && isKeyword(s, t, "names") && !named():
		f.name = "client_encoding"
		setValue()
		return f
	case v == verbSet && isKeyword(s, t, "schema") && !named():
		f.name = "search_path"
		setValue()
		return f
	case v == verbSet && isKeyword(s, t, "xml") && isKeyword(s, peek(), "option"):
		l.next()
		f.name = "xmloption"
		setValue()
		return f
	}
	name, ok := readName(l, t)
	if !ok {
		return f
	}
	f.name = name
	if v != verbSet {
		return f
	}
	// ROLE and the generic form both take the value after an optional TO/=.
	c := *l
	n := c.next()
	switch {
	case isKeyword(s, n, "to"):
		*l = c
	case isEquals(s, n):
		*l = c
		if n.end-n.start > 1 {
			// "=-1" is "=" then "-1": take the value from after the "=".
			l.pos = n.start + 1
		}
	}
	setValue()
	return f
}

// readName reads a dotted name starting with token t (var_name in the
// server's grammar) and returns its parts decoded and joined with ".".
func readName(l *lexer, t token) (string, bool) {
	name, ok := identValue(l, t)
	if !ok {
		return "", false
	}
	var b []byte // only for names of more than one part
	for {
		c := *l
		if !isSelf(l.s, c.next(), '.') {
			break
		}
		t = c.next()
		if !t.isName() {
			break
		}
		part, ok := identValue(&c, t)
		if !ok {
			return "", false
		}
		if b == nil {
			b = append(b, name...)
		}
		b = append(append(b, '.'), part...)
		*l = c
	}
	if b != nil {
		name = string(b)
	}
	return name, true
}

// isEquals reports whether t is "=", or an operator the server splits into
// "=" and trailing signs (like "=-" in "x=-1").
func isEquals(s string, t token) bool {
	if t.kind != tOp || s[t.start] != '=' {
		return false
	}
	for i := t.start + 1; i < t.end; i++ {
		if s[i] != '+' && s[i] != '-' {
			return false
		}
	}
	return true
}

// SetConfigNames returns the setting names of the set_config calls in a
// statement of text whose first argument is one string literal (the guard
// refuses any other), for a proxy that must learn which placeholder
// settings a statement may set.
func SetConfigNames(text string, st *Statement) []string {
	var names []string
	l := newLexer(text[:st.End], st.Start)
	var prev token
	for {
		t := l.next()
		if t.kind == tEOF {
			return names
		}
		if t.kind == tSelf && text[t.start] == '(' && prev.isName() && nameIs(text, prev, "set_config") {
			if a := scanArgs(l, 0); a.single && !a.truncated && a.first.isString() {
				c := newLexer(l.s, a.first.end)
				if n, ok := stringValue(&c, a.first); ok {
					names = append(names, n)
				}
			}
		}
		prev = t
	}
}

// isTempSchema reports whether name token t names the session's temporary
// schema in any spelling: pg_temp, or its real name pg_temp_N, quoted,
// U&-escaped or in any case when unquoted.
func isTempSchema(l *lexer, t token) bool {
	const temp = "pg_temp"
	var v string
	switch t.kind {
	case tIdent:
		v = l.s[t.start:t.end]
		if len(v) < len(temp) || !equalFold(v[:len(temp)], temp) {
			return false
		}
	case tQIdent, tUIdent:
		c := *l
		d, ok := identValue(&c, t)
		if !ok || len(d) < len(temp) || d[:len(temp)] != temp {
			return false
		}
		v = d
	default:
		return false
	}
	rest := v[len(temp):]
	if rest == "" {
		return true
	}
	if rest[0] != '_' || len(rest) == 1 {
		return false
	}
	for i := 1; i < len(rest); i++ {
		if rest[i] < '0' || rest[i] > '9' {
			return false
		}
	}
	return true
}
