package pgmodel

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// tokKind is a lexical token's kind.
type tokKind uint8

const (
	tEOF    tokKind = iota
	tIdent          // unquoted identifier or keyword (val lowercased)
	tQIdent         // "quoted identifier" (val as written)
	tString         // string constant, val decoded
	tNumber         // integer constant
	tParam          // $n
	tOp             // operator or punctuation: ( ) , ; . * + - / || :: = < > <= >= <> !=
)

// token is one lexical token of a statement text.
type token struct {
	kind    tokKind
	val     string // decoded value (identifiers lowercased)
	at, end int    // byte offsets into the text
	n       int    // tNumber, tParam: the number
	escape  bool   // tString written E'...'
}

// raw returns the token as written.
func (t token) raw(src string) string { return src[t.at:t.end] }

// is reports whether t is the keyword or operator s.
func (t token) is(s string) bool {
	return (t.kind == tIdent || t.kind == tOp) && t.val == s
}

// syntaxError is Postgres's 42601 with a position.
func syntaxError(src string, t token) *Error {
	if t.kind == tEOF {
		return &Error{Code: "42601", Message: "syntax error at end of input", Position: charPos(src, len(src))}
	}
	return &Error{Code: "42601", Message: "syntax error at or near \"" + t.raw(src) + "\"", Position: charPos(src, t.at)}
}

// charPos turns a byte offset into Postgres's 1-based character position.
func charPos(src string, at int) int {
	return utf8.RuneCountInString(src[:at]) + 1
}

// lex splits src into tokens, ending with a tEOF token at len(src).
func lex(src string) ([]token, *Error) {
	var out []token
	i := 0
	for {
		i = skipSpace(src, i)
		if i < 0 {
			return nil, &Error{Code: "42601", Message: "unterminated /* comment", Position: charPos(src, len(src))}
		}
		if i >= len(src) {
			return append(out, token{kind: tEOF, at: len(src), end: len(src)}), nil
		}
		c := src[i]
		start := i
		switch {
		case (c == 'e' || c == 'E') && i+1 < len(src) && src[i+1] == '\'':
			v, j, ok := lexString(src, i+1, true)
			if !ok {
				return nil, &Error{Code: "42601", Message: "unterminated quoted string at or near \"" + src[start:] + "\"", Position: charPos(src, start)}
			}
			out = append(out, token{kind: tString, val: v, at: start, end: j, escape: true})
			i = j
		case c == '\'':
			v, j, ok := lexString(src, i, false)
			if !ok {
				return nil, &Error{Code: "42601", Message: "unterminated quoted string at or near \"" + src[start:] + "\"", Position: charPos(src, start)}
			}
			out = append(out, token{kind: tString, val: v, at: start, end: j})
			i = j
		case c == '"':
			j := i + 1
			var b strings.Builder
			for {
				k := strings.IndexByte(src[j:], '"')
				if k < 0 {
					return nil, &Error{Code: "42601", Message: "unterminated quoted identifier at or near \"" + src[start:] + "\"", Position: charPos(src, start)}
				}
				b.WriteString(src[j : j+k])
				j += k + 1
				if j < len(src) && src[j] == '"' {
					b.WriteByte('"')
					j++
					continue
				}
				break
			}
			out = append(out, token{kind: tQIdent, val: b.String(), at: start, end: j})
			i = j
		case c == '$' && i+1 < len(src) && isDigit(src[i+1]):
			j := i + 1
			for j < len(src) && isDigit(src[j]) {
				j++
			}
			n, _ := strconv.Atoi(src[i+1 : j])
			out = append(out, token{kind: tParam, n: n, at: start, end: j})
			i = j
		case c == '$':
			// Dollar quoting: $tag$ ... $tag$.
			j := i + 1
			for j < len(src) && src[j] != '$' && isIdentByte(src[j]) && (j > i+1 || !isDigit(src[j])) {
				j++
			}
			if j >= len(src) || src[j] != '$' {
				return nil, syntaxError(src, token{kind: tOp, at: i, end: i + 1})
			}
			tag := src[i : j+1]
			k := strings.Index(src[j+1:], tag)
			if k < 0 {
				return nil, &Error{Code: "42601", Message: "unterminated dollar-quoted string at or near \"" + src[start:] + "\"", Position: charPos(src, start)}
			}
			out = append(out, token{kind: tString, val: src[j+1 : j+1+k], at: start, end: j + 1 + k + len(tag)})
			i = j + 1 + k + len(tag)
		case isDigit(c):
			j := i
			for j < len(src) && isDigit(src[j]) {
				j++
			}
			n, err := strconv.Atoi(src[i:j])
			if err != nil || n > 1<<31-1 {
				n = -1 // out of the model's range
			}
			out = append(out, token{kind: tNumber, val: src[i:j], n: n, at: start, end: j})
			i = j
		case isIdentStart(c):
			j := i
			for j < len(src) && isIdentByte(src[j]) {
				j++
			}
			out = append(out, token{kind: tIdent, val: strings.ToLower(src[i:j]), at: start, end: j})
			i = j
		default:
			op := lexOp(src, i)
			out = append(out, token{kind: tOp, val: op, at: start, end: i + len(op)})
			i += len(op)
		}
	}
}

// lexOp reads an operator or punctuation at i.
func lexOp(src string, i int) string {
	for _, op := range []string{"::", "||", "<=", ">=", "<>", "!="} {
		if strings.HasPrefix(src[i:], op) {
			return op
		}
	}
	_, size := utf8.DecodeRuneInString(src[i:])
	return src[i : i+size]
}

// lexString reads a quoted string starting at the quote at i; escape
// says backslash escapes apply (E'...').
func lexString(src string, i int, escape bool) (string, int, bool) {
	var b strings.Builder
	j := i + 1
	for j < len(src) {
		c := src[j]
		switch {
		case c == '\'':
			if j+1 < len(src) && src[j+1] == '\'' {
				b.WriteByte('\'')
				j += 2
				continue
			}
			return b.String(), j + 1, true
		case c == '\\' && escape && j+1 < len(src):
			j++
			switch e := src[j]; e {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'x':
				k := j + 1
				for k < len(src) && k < j+3 && isHex(src[k]) {
					k++
				}
				v, _ := strconv.ParseUint(src[j+1:k], 16, 8)
				b.WriteByte(byte(v))
				j = k
				continue
			case 'u', 'U':
				w := 4
				if e == 'U' {
					w = 8
				}
				if j+1+w <= len(src) {
					v, err := strconv.ParseUint(src[j+1:j+1+w], 16, 32)
					if err == nil {
						b.WriteRune(rune(v))
						j += 1 + w
						continue
					}
				}
				b.WriteByte(e)
			default:
				b.WriteByte(e)
			}
			j++
		default:
			b.WriteByte(c)
			j++
		}
	}
	return "", j, false
}

// skipSpace skips whitespace and comments; -1 for an unterminated block
// comment.
func skipSpace(src string, i int) int {
	for i < len(src) {
		switch c := src[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(src) && src[i+1] == '-':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(src) && src[i+1] == '*':
			depth := 0
			for {
				if i+1 >= len(src) {
					return -1
				}
				switch {
				case src[i] == '/' && src[i+1] == '*':
					depth++
					i += 2
				case src[i] == '*' && src[i+1] == '/':
					depth--
					i += 2
				default:
					i++
				}
				if depth == 0 {
					break
				}
			}
		default:
			return i
		}
	}
	return i
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}
func isIdentByte(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }

// stmtText is one statement of a Query or Parse text: its tokens (ending
// with the ';' that ends it, or tEOF) within the whole source.
type stmtText struct {
	src    string  // the whole message text (positions are relative to it)
	toks   []token // the statement's tokens, then tEOF
	at, to int     // byte range of the statement within src
	end    int     // where its ';' (or the text) ends: to plus any comment after it
}

// text returns the statement's own text.
func (s stmtText) text() string { return s.src[s.at:s.to] }

// withComments returns the statement's text with the comments that follow
// it before its ';'.
func (s stmtText) withComments() string { return s.src[s.at:s.end] }

// split cuts the tokens of a whole text into statements at ';', dropping
// empty ones.
func split(src string, toks []token) []stmtText {
	var out []stmtText
	start := 0
	for i, t := range toks {
		if t.kind == tEOF || t.is(";") {
			if i > start {
				st := stmtText{src: src, at: toks[start].at, to: toks[i-1].end, end: t.at}
				// The statement ends with its ';' (a syntax error there is
				// reported at it) or the end of the text.
				st.toks = toks[start : i+1 : i+1]
				out = append(out, st)
			}
			start = i + 1
		}
	}
	return out
}
