package sqlscan

import "strings"

// This file is the lexer: it cuts SQL text into tokens exactly where the
// PostgreSQL 15 server's scanner (src/backend/parser/scan.l) cuts it, with
// standard_conforming_strings on. Only token boundaries and kinds are
// computed here; decoding token values (which allocates) is in decode.go.

// tokKind is the kind of a token.
type tokKind uint8

const (
	tEOF     tokKind = iota
	tIdent           // unquoted identifier or keyword
	tQIdent          // "quoted identifier"
	tUIdent          // U&"unicode identifier"
	tString          // 'standard string', also N'national string'
	tEString         // E'escape string'
	tUString         // U&'unicode string'
	tBString         // B'bit string'
	tXString         // X'hex string'
	tDollar          // $tag$dollar-quoted string$tag$
	tParam           // $1
	tNumber          // 1, 1.5, 1e10
	tOp              // operator characters, "::", ":=", ".."
	tSelf            // one of , ( ) [ ] . ; :
	tOther           // a byte the server rejects outside quotes (e.g. '\', '{', a lone '$')
)

// token is one lexical token: text[start:end]. A quoted token whose text
// continues past a quote continuation includes all its parts.
type token struct {
	start, end   int
	kind         tokKind
	unterminated bool // the text ended inside this token
}

// isString reports whether t is a character string constant (what the
// server calls SCONST or USCONST).
func (t token) isString() bool {
	switch t.kind {
	case tString, tEString, tUString, tDollar:
		return true
	}
	return false
}

// isName reports whether t can be (part of) a name: an identifier, quoted or not.
func (t token) isName() bool {
	return t.kind == tIdent || t.kind == tQIdent || t.kind == tUIdent
}

// lexer produces the tokens of s from pos on, skipping whitespace and
// comments. The zero value is not useful; set s.
type lexer struct {
	s   string
	pos int
	// badComment is the start of a /* comment that the text ended in, or -1
	// if none has been seen. It is only meaningful once next returned tEOF.
	badComment int
}

func newLexer(s string, pos int) lexer {
	return lexer{s: s, pos: pos, badComment: -1}
}

// Character classes of scan.l, as a read-only table.
const (
	cSpace      = 1 << iota // [ \t\n\r\f\v]
	cIdentStart             // [A-Za-z\200-\377_]
	cIdentCont              // [A-Za-z\200-\377_0-9$]
	cOp                     // {op_chars}
)

var charClass = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			// scan.l's {space} is [ \t\n\r\f]; PostgreSQL 16 adds \v. A \v
			// outside quotes is a syntax error in 15, so treating it as
			// space is safe.
			t[c] = cSpace
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80:
			t[c] = cIdentStart | cIdentCont
		case c >= '0' && c <= '9' || c == '$':
			t[c] = cIdentCont
		case strings.IndexByte("~!@#^&|`?+-*/%<>=", byte(c)) >= 0:
			t[c] = cOp
		}
	}
	return t
}()

func isSpace(c byte) bool      { return charClass[c]&cSpace != 0 }
func isIdentStart(c byte) bool { return charClass[c]&cIdentStart != 0 }
func isIdentCont(c byte) bool  { return charClass[c]&cIdentCont != 0 }
func isDolqCont(c byte) bool   { return isIdentCont(c) && c != '$' }
func isOpChar(c byte) bool     { return charClass[c]&cOp != 0 }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// skipTrivia skips whitespace and comments. "--" comments run to the end of
// the line; "/* */" comments nest.
func (l *lexer) skipTrivia() {
	s := l.s
	i := l.pos
	for i < len(s) {
		c := s[i]
		switch {
		case isSpace(c):
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			i = skipLineComment(s, i)
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			end, ok := skipBlockComment(s, i)
			if !ok {
				l.badComment = i
			}
			i = end
		default:
			l.pos = i
			return
		}
	}
	l.pos = i
}

// skipLineComment returns the position of the newline ending the "--"
// comment at i (or len(s)).
func skipLineComment(s string, i int) int {
	for i < len(s) && s[i] != '\n' && s[i] != '\r' {
		i++
	}
	return i
}

// skipBlockComment returns the position after the (nested) comment starting
// at i, or len(s) and false if the text ends inside it.
func skipBlockComment(s string, i int) (int, bool) {
	depth := 0
	i += 2
	for i < len(s) {
		switch {
		case s[i] == '/' && i+1 < len(s) && s[i+1] == '*':
			depth++
			i += 2
		case s[i] == '*' && i+1 < len(s) && s[i+1] == '/':
			if depth == 0 {
				return i + 2, true
			}
			depth--
			i += 2
		default:
			i++
		}
	}
	return len(s), false
}

// next returns the next token, or a tEOF token at the end of the text.
func (l *lexer) next() token {
	l.skipTrivia()
	s := l.s
	i := l.pos
	if i >= len(s) {
		return token{start: i, end: i, kind: tEOF}
	}
	t := token{start: i}
	c := s[i]
	switch {
	case c == '\'':
		t.kind = tString
		t.end, t.unterminated = scanString(s, i+1, false)
	case (c == 'e' || c == 'E') && i+1 < len(s) && s[i+1] == '\'':
		t.kind = tEString
		t.end, t.unterminated = scanString(s, i+2, true)
	case (c == 'n' || c == 'N') && i+1 < len(s) && s[i+1] == '\'':
		t.kind = tString
		t.end, t.unterminated = scanString(s, i+2, false)
	case (c == 'b' || c == 'B') && i+1 < len(s) && s[i+1] == '\'':
		// The server has no '' inside bit strings, but a second quote
		// right after the closing one starts a new string, so the text
		// is cut in the same place as if '' were a doubled quote.
		t.kind = tBString
		t.end, t.unterminated = scanString(s, i+2, false)
	case (c == 'x' || c == 'X') && i+1 < len(s) && s[i+1] == '\'':
		t.kind = tXString
		t.end, t.unterminated = scanString(s, i+2, false)
	case (c == 'u' || c == 'U') && i+2 < len(s) && s[i+1] == '&' && s[i+2] == '\'':
		t.kind = tUString
		t.end, t.unterminated = scanString(s, i+3, false)
	case (c == 'u' || c == 'U') && i+2 < len(s) && s[i+1] == '&' && s[i+2] == '"':
		t.kind = tUIdent
		t.end, t.unterminated = scanQuotedIdent(s, i+3)
	case c == '"':
		t.kind = tQIdent
		t.end, t.unterminated = scanQuotedIdent(s, i+1)
	case isIdentStart(c):
		j := i + 1
		for j < len(s) && isIdentCont(s[j]) {
			j++
		}
		t.kind, t.end = tIdent, j
	case c == '$':
		t.kind, t.end, t.unterminated = scanDollar(s, i)
	case isDigit(c) || c == '.' && i+1 < len(s) && isDigit(s[i+1]):
		t.kind, t.end = tNumber, scanNumber(s, i)
	case c == '.':
		t.kind, t.end = tSelf, i+1
		if i+1 < len(s) && s[i+1] == '.' {
			t.kind, t.end = tOp, i+2
		}
	case c == ':':
		t.kind, t.end = tSelf, i+1
		if i+1 < len(s) && (s[i+1] == ':' || s[i+1] == '=') {
			t.kind, t.end = tOp, i+2
		}
	case c == ',' || c == '(' || c == ')' || c == '[' || c == ']' || c == ';':
		t.kind, t.end = tSelf, i+1
	case isOpChar(c):
		// An operator stops where a comment starts ("--" or "/*"); the
		// first character cannot start one, skipTrivia saw to that.
		j := i + 1
		for j < len(s) && isOpChar(s[j]) {
			if (s[j] == '-' && j+1 < len(s) && s[j+1] == '-') || (s[j] == '/' && j+1 < len(s) && s[j+1] == '*') {
				break
			}
			j++
		}
		t.kind, t.end = tOp, j
	default:
		t.kind, t.end = tOther, i+1
	}
	l.pos = t.end
	return t
}

// scanString scans the body of a quoted string whose opening quote ends
// just before i, following quote continuations. With escapes (E'...'),
// a backslash takes the next byte. It returns the end of the token.
func scanString(s string, i int, escapes bool) (int, bool) {
	for i < len(s) {
		if !escapes {
			// Jump to the next quote.
			k := strings.IndexByte(s[i:], '\'')
			if k < 0 {
				break
			}
			i += k
		}
		switch s[i] {
		case '\\':
			if escapes {
				i += 2
				continue
			}
			i++
		case '\'':
			if i+1 < len(s) && s[i+1] == '\'' {
				i += 2
				continue
			}
			if j, ok := continuation(s, i+1); ok {
				i = j + 1
				continue
			}
			return i + 1, false
		default:
			i++
		}
	}
	return len(s), true
}

// continuation reports whether the text at i (just after a string's closing
// quote) is a quote continuation: whitespace including at least one newline,
// possibly with "--" comments, and then a quote. It returns that quote's
// position. This is scan.l's {quotecontinue}; "/* */" comments do not count.
func continuation(s string, i int) (int, bool) {
	newline := false
	for i < len(s) {
		c := s[i]
		switch {
		case c == '\n' || c == '\r':
			newline = true
			i++
		case isSpace(c):
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			i = skipLineComment(s, i)
		case c == '\'':
			return i, newline
		default:
			return 0, false
		}
	}
	return 0, false
}

// scanQuotedIdent scans a quoted identifier's body from i; "" is a quote.
func scanQuotedIdent(s string, i int) (int, bool) {
	for i < len(s) {
		if s[i] == '"' {
			if i+1 < len(s) && s[i+1] == '"' {
				i += 2
				continue
			}
			return i + 1, false
		}
		i++
	}
	return len(s), true
}

// dollarTag returns the end of the dollar-quote delimiter ($tag$ or $$)
// starting at i, or -1 if there is none.
func dollarTag(s string, i int) int {
	j := i + 1
	if j < len(s) && isIdentStart(s[j]) {
		j++
		for j < len(s) && isDolqCont(s[j]) {
			j++
		}
	}
	if j < len(s) && s[j] == '$' {
		return j + 1
	}
	return -1
}

// scanDollar scans a token starting with '$': a parameter, a dollar-quoted
// string, or a lone '$' that the server rejects.
func scanDollar(s string, i int) (tokKind, int, bool) {
	if i+1 < len(s) && isDigit(s[i+1]) {
		j := i + 2
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		return tParam, j, false
	}
	tagEnd := dollarTag(s, i)
	if tagEnd < 0 {
		return tOther, i + 1, false
	}
	// The body ends at the first later occurrence of the same delimiter:
	// the server's scanner reaches every '$' in the body as a token start.
	tag := s[i:tagEnd]
	if k := strings.Index(s[tagEnd:], tag); k >= 0 {
		return tDollar, tagEnd + k + len(tag), false
	}
	return tDollar, len(s), true
}

// scanNumber scans a numeric constant starting at i. It stops before an
// exponent marker that has no digits, like the server's fail rules do.
func scanNumber(s string, i int) int {
	j := i
	for j < len(s) && isDigit(s[j]) {
		j++
	}
	if j < len(s) && s[j] == '.' && !(j+1 < len(s) && s[j+1] == '.') {
		j++
		for j < len(s) && isDigit(s[j]) {
			j++
		}
	}
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		k := j + 1
		if k < len(s) && (s[k] == '+' || s[k] == '-') {
			k++
		}
		if k < len(s) && isDigit(s[k]) {
			for k < len(s) && isDigit(s[k]) {
				k++
			}
			j = k
		}
	}
	return j
}
