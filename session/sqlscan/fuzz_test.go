package sqlscan

import "testing"

// FuzzSplit checks that Split never panics and returns statements in
// order, non-overlapping and within the text, and that splitting one
// statement's text again gives that statement back.
func FuzzSplit(f *testing.F) {
	for _, q := range guardDeny {
		f.Add(q)
	}
	for _, q := range guardAllow {
		f.Add(q)
	}
	f.Fuzz(func(t *testing.T, text string) {
		sts := Split(text, nil)
		prev := 0
		for i, st := range sts {
			if st.Start < prev || st.Start > st.End || st.End > len(text) {
				t.Fatalf("statement %d %+v out of order or bounds (previous end %d, len %d)", i, st, prev, len(text))
			}
			if st.Start == st.End && st.Flags&FlagUnterminated == 0 {
				t.Fatalf("statement %d %+v is empty", i, st)
			}
			if st.Flags&FlagUnterminated != 0 && (i != len(sts)-1 || st.End != len(text)) {
				t.Fatalf("statement %d %+v: unterminated but not last or not to the end", i, st)
			}
			prev = st.End
			again := Split(text[st.Start:st.End], nil)
			if len(again) != 1 || again[0].Kind != st.Kind || again[0].Flags != st.Flags || again[0].Name != st.Name {
				t.Fatalf("statement %d %q: split again gives %+v, want %+v", i, text[st.Start:st.End], again, st)
			}
		}
		testPolicy.Check(text, sts)
	})
}

// FuzzCheck checks that Check never panics and that a comment inserted
// between two tokens never turns a refused text into an accepted one.
func FuzzCheck(f *testing.F) {
	for i, q := range guardDeny {
		f.Add(q, uint(i))
	}
	f.Fuzz(func(t *testing.T, text string, at uint) {
		p := testPolicy
		p.AllowDo = at%2 == 0
		v := p.Check(text, Split(text, nil))
		if v == nil {
			return
		}
		var bounds []int
		l := newLexer(text, 0)
		for tok := l.next(); tok.kind != tEOF; tok = l.next() {
			bounds = append(bounds, tok.start, tok.end)
		}
		if len(bounds) == 0 {
			return
		}
		b := bounds[int(at/2%uint(len(bounds)))]
		text2 := text[:b] + " /**/ " + text[b:]
		if p.Check(text2, Split(text2, nil)) == nil {
			t.Fatalf("%q is refused (%s) but %q is not", text, v.Reason, text2)
		}
	})
}
