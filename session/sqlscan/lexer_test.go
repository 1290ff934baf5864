package sqlscan

import (
	"fmt"
	"strings"
	"testing"
)

var kindNames = [...]string{
	tEOF: "eof", tIdent: "ident", tQIdent: "qident", tUIdent: "uident", tString: "str",
	tEString: "estr", tUString: "ustr", tBString: "bstr", tXString: "xstr", tDollar: "dollar",
	tParam: "param", tNumber: "num", tOp: "op", tSelf: "self", tOther: "other",
}

// lexAll renders the tokens of s as "kind:text", with "!" after the kind
// of an unterminated token, and "badcomment" if s ends inside a comment.
func lexAll(s string) string {
	l := newLexer(s, 0)
	var out []string
	for {
		t := l.next()
		if t.kind == tEOF {
			break
		}
		k := kindNames[t.kind]
		if t.unterminated {
			k += "!"
		}
		out = append(out, k+":"+s[t.start:t.end])
	}
	if l.badComment >= 0 {
		out = append(out, "badcomment")
	}
	return strings.Join(out, " ")
}

func TestLexer(t *testing.T) {
	tests := []struct{ in, want string }{
		// whitespace and comments
		{" \t\r\n\f\vx", "ident:x"},
		{"-- c\nx", "ident:x"},
		{"x-- c", "ident:x"},
		{"a--b\nc", "ident:a ident:c"},
		{"/* a /* b */ c */ x", "ident:x"},
		{"/* a /* b */ x", "badcomment"},
		{"/*/ x */ y", "ident:y"},
		{"/*/* x */ y", "badcomment"},
		{"/**/x", "ident:x"},
		{"/* ** / * */x", "ident:x"},
		{"x/*", "ident:x badcomment"},
		{"+--x\ny", "op:+ ident:y"},
		{"*/*x*/y", "op:* ident:y"},
		{"<=/*c*/>", "op:<= op:>"},
		{"a/**/b", "ident:a ident:b"},
		// standard strings: backslash is literal
		{"'a''b' x", "str:'a''b' ident:x"},
		{`'a\' x`, `str:'a\' ident:x`},
		{`'a\'' x'`, `str:'a\'' x'`},
		{"''", "str:''"},
		{"'abc", "str!:'abc"},
		{"n'x' N'y'", "str:n'x' str:N'y'"},
		// escape strings
		{`E'\'' x`, `estr:E'\'' ident:x`},
		{`e'\\' x`, `estr:e'\\' ident:x`},
		{`E'a\'b'`, `estr:E'a\'b'`},
		{`E'\\'' x'`, `estr:E'\\'' x'`},
		{`E'abc\'`, `estr!:E'abc\'`},
		{`E'abc\`, `estr!:E'abc\`},
		{`xe'a'`, `ident:xe str:'a'`},
		// unicode strings and identifiers, bit and hex strings
		{`U&'\0041' UESCAPE '!'`, `ustr:U&'\0041' ident:UESCAPE str:'!'`},
		{`u&"x" U&"a""b"`, `uident:u&"x" uident:U&"a""b"`},
		{`U& 'x'`, `ident:U op:& str:'x'`},
		{`U&"x`, `uident!:U&"x`},
		{"B'01' x'1F' X'0'", "bstr:B'01' xstr:x'1F' xstr:X'0'"},
		{"B'01", "bstr!:B'01"},
		// quote continuation: only whitespace with a newline, "--" comments allowed
		{"'a'\n'b'", "str:'a'\n'b'"},
		{"'a' \t\n \n 'b'", "str:'a' \t\n \n 'b'"},
		{"'a'\r'b'", "str:'a'\r'b'"},
		{"'a' 'b'", "str:'a' str:'b'"},
		{"'a'/* c */\n'b'", "str:'a' str:'b'"},
		{"'a'\n/* c */'b'", "str:'a' str:'b'"},
		{"'a' -- c\n'b'", "str:'a' -- c\n'b'"},
		{"'a'\n-- c\n'b'", "str:'a'\n-- c\n'b'"},
		{"'a'\n-- c", "str:'a'"},
		{"E'a'\n'\\''", "estr:E'a'\n'\\''"},
		{"'a'\nE'b'", "str:'a' estr:E'b'"},
		{"'a'\n'b", "str!:'a'\n'b"},
		// quoted identifiers
		{`"a""b" c`, `qident:"a""b" ident:c`},
		{`"a`, `qident!:"a`},
		{`"a'b" 'c"d'`, `qident:"a'b" str:'c"d'`},
		// dollar quotes, parameters, identifiers with $
		{"$$a;b$$ x", "dollar:$$a;b$$ ident:x"},
		{"$a$ $b$ $a$ x", "dollar:$a$ $b$ $a$ ident:x"},
		{"$a$x$ba$y$a$", "dollar:$a$x$ba$y$a$"},
		{"$a$ x", "dollar!:$a$ x"},
		{"$1 $23", "param:$1 param:$23"},
		{"$1a", "param:$1 ident:a"},
		{"a$b $c", "ident:a$b other:$ ident:c"},
		{"a$$b$$", "ident:a$$b$$"},
		{"1$a$;$a$", "num:1 dollar:$a$;$a$"},
		{"$ab", "other:$ ident:ab"},
		{"$é$x$é$", "dollar:$é$x$é$"},
		{"$A$x$a$y$A$", "dollar:$A$x$a$y$A$"},
		// identifiers and keywords
		{"SeLeCt éa \xc2\xa0b _x1$", "ident:SeLeCt ident:éa ident:\xc2\xa0b ident:_x1$"},
		// numbers
		{"1 1.5 .5 1. 1e10 1.5E-3", "num:1 num:1.5 num:.5 num:1. num:1e10 num:1.5E-3"},
		{"1e'x'", "num:1 estr:e'x'"},
		{"1..2", "num:1 op:.. num:2"},
		{"1e+x", "num:1 ident:e op:+ ident:x"},
		// operators and punctuation
		{"a::b := => .. ; , ( ) [ ] . :", "ident:a op::: ident:b op::= op:=> op:.. self:; self:, self:( self:) self:[ self:] self:. self::"},
		{"a<>b!=c", "ident:a op:<> ident:b op:!= ident:c"},
		{"\\ { }", "other:\\ other:{ other:}"},
	}
	for _, tt := range tests {
		if got := lexAll(tt.in); got != tt.want {
			t.Errorf("lex %q\n got %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

func TestDecodeString(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"'abc'", "abc", true},
		{"'a''b'", "a'b", true},
		{`'a\n'`, `a\n`, true},
		{"N'x'", "x", true},
		{"'ro'\n'le'", "role", true},
		{"'ro' -- c\n  'le'", "role", true},
		{"'a'\n'b'\n\n'c'", "abc", true},
		{`E'\''`, "'", true},
		{`E'a\nb\tc\\'`, "a\nb\tc\\", true},
		{`E'\x41\x4a\101\7'`, "AJA\a", true},
		{`E'\u0041\U00000042'`, "AB", true},
		{`E'\uD83D\uDE00'`, "\U0001F600", true},
		{`E'\uD83D'`, "", false},
		{`E'\u004'`, "", false},
		{`E'\000'`, "", false},
		{`E'\377'`, "", false},
		{`E'\q'`, "q", true},
		{"E'a'\n'\\''", "a'", true},
		{`U&'\0041\+000042\\'`, `AB\`, true},
		{`U&'!0041' UESCAPE '!'`, "A", true},
		{`U&'!0041' /* c */ UESCAPE -- c` + "\n" + `E'!'`, "A", true},
		{`U&'\0041' UESCAPE '!'`, `\0041`, true},
		{`U&'x' UESCAPE 'a'`, "", false},
		{`U&'x' UESCAPE '!!'`, "", false},
		{`U&'\00'` + "\n" + `'41'`, "A", true},
		{`U&'\D83D\DE00'`, "\U0001F600", true},
		{`U&'\DE00'`, "", false},
		{`U&'\0000'`, "", false},
		{`U&'\00g0'`, "", false},
		{"$$a'b$$", "a'b", true},
		{"$x$ $$ $x$", " $$ ", true},
		{"B'01'", "", false},
		{"'abc", "", false},
	}
	for _, tt := range tests {
		l := newLexer(tt.in, 0)
		tok := l.next()
		got, ok := stringValue(&l, tok)
		if got != tt.want || ok != tt.ok {
			t.Errorf("stringValue(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestDecodeIdent(t *testing.T) {
	long := strings.Repeat("a", 70)
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"RoLe", "role", true},
		{`"RoLe"`, "RoLe", true},
		{`"a""b"`, `a"b`, true},
		{`""`, "", false},
		{`U&"r\006Fle"`, "role", true},
		{`U&"r!006Fle" UESCAPE '!'`, "role", true},
		{`U&"set\005fconfig"`, "set_config", true},
		{`U&"\0000"`, "", false},
		{"ÉA", "Éa", true},
		{long, long[:63], true},
		{`"` + long + `"`, long[:63], true},
		{strings.Repeat("é", 40), strings.Repeat("é", 31), true},
	}
	for _, tt := range tests {
		l := newLexer(tt.in, 0)
		tok := l.next()
		got, ok := identValue(&l, tok)
		if got != tt.want || ok != tt.ok {
			t.Errorf("identValue(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func ExampleSplit() {
	text := "BEGIN; SET LOCAL statement_timeout = '5s'; SELECT 'a;b' /* ; */; COMMIT AND CHAIN"
	for _, st := range Split(text, nil) {
		fmt.Printf("%q kind=%d flags=%d name=%q\n", text[st.Start:st.End], st.Kind, st.Flags, st.Name)
	}
	// Output:
	// "BEGIN" kind=1 flags=0 name=""
	// "SET LOCAL statement_timeout = '5s'" kind=12 flags=0 name="statement_timeout"
	// "SELECT 'a;b'" kind=0 flags=0 name=""
	// "COMMIT AND CHAIN" kind=3 flags=1 name=""
}
