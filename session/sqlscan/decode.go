package sqlscan

import (
	"strings"
	"unicode/utf8"
)

// This file turns tokens into the values the server sees: identifiers
// folded and truncated, string constants with their escapes and quote
// continuations applied. A false ok means the server would reject the
// token (or we cannot be sure what it means); callers treat that as
// "unknown", never as "harmless".

// maxIdentLen is NAMEDATALEN-1: the server truncates identifiers to it.
const maxIdentLen = 63

// identValue returns the name that token t (tIdent, tQIdent or tUIdent)
// stands for. For tUIdent, l must be positioned just after t so that a
// UESCAPE clause can be read; l is advanced past it.
func identValue(l *lexer, t token) (string, bool) {
	s := l.s[t.start:t.end]
	if t.unterminated {
		return "", false
	}
	switch t.kind {
	case tIdent:
		return truncateIdent(lowerASCII(s)), true
	case tQIdent:
		v := undouble(s[1:len(s)-1], '"')
		if v == "" {
			return "", false // zero-length delimited identifier
		}
		return truncateIdent(v), true
	case tUIdent:
		esc, ok := uescape(l)
		if !ok {
			return "", false
		}
		v, ok := unicodeUnescape(undouble(s[3:len(s)-1], '"'), esc)
		if !ok || v == "" {
			return "", false
		}
		return truncateIdent(v), true
	}
	return "", false
}

// stringValue returns the value of the character string constant t. For
// tUString, l must be positioned just after t so that a UESCAPE clause can
// be read; l is advanced past it.
func stringValue(l *lexer, t token) (string, bool) {
	s := l.s[t.start:t.end]
	if t.unterminated {
		return "", false
	}
	switch t.kind {
	case tDollar:
		e := dollarTag(s, 0)
		return s[e : len(s)-e], true
	case tString:
		if s[0] != '\'' {
			s = s[1:] // N'...'
		}
		return plainValue(s[1:]), true
	case tEString:
		return escapeValue(s[2:])
	case tUString:
		raw := plainValue(s[3:])
		esc, ok := uescape(l)
		if !ok {
			return "", false
		}
		return unicodeUnescape(raw, esc)
	}
	return "", false
}

// uescape reads an optional "UESCAPE 'c'" clause at l and returns the
// escape character (default '\').
func uescape(l *lexer) (byte, bool) {
	save := *l
	t := l.next()
	if !isKeyword(l.s, t, "uescape") {
		*l = save
		return '\\', true
	}
	t = l.next()
	if t.kind == tUString || !t.isString() {
		return 0, false // "UESCAPE must be followed by a simple string literal"
	}
	v, ok := stringValue(l, t)
	if !ok || len(v) != 1 {
		return 0, false
	}
	c := v[0]
	if isHex(c) || c == '+' || c == '\'' || c == '"' || isSpace(c) {
		return 0, false
	}
	return c, true
}

// plainValue returns the value of a standard string body: b starts after
// the opening quote and runs to the end of the token. A doubled quote is a quote and
// continued parts are joined.
func plainValue(b string) string {
	// Fast path: one part without doubled quotes needs no copy.
	if i := strings.IndexByte(b, '\''); i == len(b)-1 {
		return b[:i]
	}
	var out strings.Builder
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\'' {
			out.WriteByte(c)
			continue
		}
		if i+1 < len(b) && b[i+1] == '\'' {
			out.WriteByte('\'')
			i++
			continue
		}
		j, ok := continuation(b, i+1)
		if !ok {
			break
		}
		i = j
	}
	return out.String()
}

// escapeValue returns the value of an E'...' body (after the opening
// quote, to the end of the token).
func escapeValue(b string) (string, bool) {
	var out []byte
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case c == '\'':
			if i+1 < len(b) && b[i+1] == '\'' {
				out = append(out, '\'')
				i += 2
				continue
			}
			j, ok := continuation(b, i+1)
			if !ok {
				i = len(b)
				continue
			}
			i = j + 1
		case c == '\\' && i+1 < len(b):
			d := b[i+1]
			switch {
			case d >= '0' && d <= '7':
				v, n := 0, 1
				for n <= 3 && i+n < len(b) && b[i+n] >= '0' && b[i+n] <= '7' {
					v = v*8 + int(b[i+n]-'0')
					n++
				}
				out = append(out, byte(v))
				i += n
			case d == 'x' && i+2 < len(b) && isHex(b[i+2]):
				v, n := 0, 2
				for n <= 3 && i+n < len(b) && isHex(b[i+n]) {
					v = v*16 + hexVal(b[i+n])
					n++
				}
				out = append(out, byte(v))
				i += n
			case d == 'u' || d == 'U':
				r, n, ok := escapeUnicode(b[i:])
				if !ok {
					return "", false
				}
				if r >= 0xD800 && r <= 0xDBFF {
					// A high surrogate must be followed by a low one.
					r2, n2, ok := escapeUnicode(b[i+n:])
					if !ok || r2 < 0xDC00 || r2 > 0xDFFF {
						return "", false
					}
					r = 0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00)
					n += n2
				} else if r >= 0xDC00 && r <= 0xDFFF {
					return "", false
				}
				if r == 0 || r > 0x10FFFF {
					return "", false
				}
				out = utf8.AppendRune(out, r)
				i += n
			default:
				switch d {
				case 'b':
					d = '\b'
				case 'f':
					d = '\f'
				case 'n':
					d = '\n'
				case 'r':
					d = '\r'
				case 't':
					d = '\t'
				}
				out = append(out, d)
				i += 2
			}
		default:
			out = append(out, c)
			i++
		}
	}
	v := string(out)
	if strings.IndexByte(v, 0) >= 0 || !utf8.ValidString(v) {
		return "", false // the server rejects these as invalid byte sequences
	}
	return v, true
}

// escapeUnicode reads \uXXXX or \UXXXXXXXX at the start of b.
func escapeUnicode(b string) (rune, int, bool) {
	n := 4
	if len(b) < 2 || b[0] != '\\' {
		return 0, 0, false
	}
	switch b[1] {
	case 'u':
	case 'U':
		n = 8
	default:
		return 0, 0, false
	}
	if len(b) < 2+n {
		return 0, 0, false
	}
	var r rune
	for _, c := range []byte(b[2 : 2+n]) {
		if !isHex(c) {
			return 0, 0, false
		}
		r = r*16 + rune(hexVal(c))
	}
	return r, 2 + n, true
}

// unicodeUnescape applies U& escapes (esc followed by 4 hex digits, esc+
// followed by 6, or esc doubled) the way the server's str_udeescape does.
func unicodeUnescape(s string, esc byte) (string, bool) {
	if strings.IndexByte(s, esc) < 0 {
		return s, true
	}
	var out []byte
	var high rune
	for i := 0; i < len(s); {
		if s[i] != esc {
			if high != 0 {
				return "", false
			}
			out = append(out, s[i])
			i++
			continue
		}
		var r rune
		switch {
		case i+1 < len(s) && s[i+1] == esc:
			if high != 0 {
				return "", false
			}
			out = append(out, esc)
			i += 2
			continue
		case i+4 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) && isHex(s[i+3]) && isHex(s[i+4]):
			for _, c := range []byte(s[i+1 : i+5]) {
				r = r*16 + rune(hexVal(c))
			}
			i += 5
		case i+7 < len(s) && s[i+1] == '+' && allHex(s[i+2:i+8]):
			for _, c := range []byte(s[i+2 : i+8]) {
				r = r*16 + rune(hexVal(c))
			}
			i += 8
		default:
			return "", false // invalid Unicode escape
		}
		switch {
		case high != 0:
			if r < 0xDC00 || r > 0xDFFF {
				return "", false
			}
			r = 0x10000 + (high-0xD800)<<10 + (r - 0xDC00)
			high = 0
		case r >= 0xD800 && r <= 0xDBFF:
			high = r
			continue
		case r >= 0xDC00 && r <= 0xDFFF:
			return "", false
		}
		if r == 0 || r > 0x10FFFF {
			return "", false
		}
		out = utf8.AppendRune(out, r)
	}
	if high != 0 {
		return "", false
	}
	return string(out), true
}

// undouble replaces each doubled q in s by one q.
func undouble(s string, q byte) string {
	if strings.IndexByte(s, q) < 0 {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		out.WriteByte(s[i])
		if s[i] == q && i+1 < len(s) && s[i+1] == q {
			i++
		}
	}
	return out.String()
}

// truncateIdent truncates s to maxIdentLen bytes without splitting a UTF-8
// character, as the server does for identifiers.
func truncateIdent(s string) string {
	if len(s) <= maxIdentLen {
		return s
	}
	n := maxIdentLen
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// lowerASCII lowercases A-Z only, like the server's identifier folding. It
// does not allocate when s has no upper-case letters.
func lowerASCII(s string) string {
	i := 0
	for i < len(s) && !(s[i] >= 'A' && s[i] <= 'Z') {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if b[i] >= 'A' && b[i] <= 'Z' {
			b[i] += 'a' - 'A'
		}
	}
	return string(b)
}

// equalFold compares ASCII case-insensitively, like the server's
// configuration-name comparison (Unicode folding would equate more).
func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

// hasPrefixFold is strings.HasPrefix with ASCII case folding.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && equalFold(s[:len(prefix)], prefix)
}

// indexFold is strings.Index with ASCII case folding; sub must be lower case.
func indexFold(s, sub string) int {
	n := len(sub)
	if n == 0 {
		return 0
	}
	for i := 0; i+n <= len(s); i++ {
		if lower(s[i]) == sub[0] && equalFold(s[i:i+n], sub) {
			return i
		}
	}
	return -1
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func allHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	default:
		return int(c-'A') + 10
	}
}

// isKeyword reports whether t is the unquoted word kw (lower case).
func isKeyword(s string, t token, kw string) bool {
	return t.kind == tIdent && t.end-t.start == len(kw) && equalFold(s[t.start:t.end], kw)
}

// isSelf reports whether t is the punctuation character c.
func isSelf(s string, t token, c byte) bool {
	return t.kind == tSelf && s[t.start] == c
}
