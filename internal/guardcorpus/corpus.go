// Package guardcorpus reads the guard corpus (testdata/guard/corpus.txt),
// for the tests that check the guard against it.
package guardcorpus

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Entry is one entry of a guard corpus file (testdata/guard/corpus.txt).
type Entry struct {
	SQL  string // the Query text
	Deny bool   // the guard must refuse it (else it must pass)
	Line int    // the line the entry starts on
}

// Load reads a guard corpus file. Its format:
//
//   - Blank lines and lines starting with "#" are ignored.
//   - "deny: SQL" or "allow: SQL" starts an entry; SQL is the rest of the line.
//   - A following line starting with "|" continues the entry: a newline and
//     the rest of the line (after "| ", or after "|" if no space follows)
//     are appended.
//   - In SQL, {NL} {CR} {TAB} {FF} {VT} and {SP} stand for a newline,
//     carriage return, tab, form feed, vertical tab and space (for spaces
//     at the end of a line); everything else, backslashes included, is
//     literal.
func Load(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var sql []string // the current entry's raw lines
	flush := func() {
		if len(out) > 0 && sql != nil {
			out[len(out)-1].SQL = unescapeCorpus(strings.Join(sql, "\n"))
		}
		sql = nil
	}
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasPrefix(text, "|"):
			if sql == nil {
				return nil, fmt.Errorf("%s:%d: continuation line without an entry", path, line)
			}
			rest := text[1:]
			rest = strings.TrimPrefix(rest, " ")
			sql = append(sql, rest)
		case strings.TrimSpace(text) == "" || strings.HasPrefix(text, "#"):
			flush()
		case strings.HasPrefix(text, "deny:"), strings.HasPrefix(text, "allow:"):
			flush()
			deny := strings.HasPrefix(text, "deny:")
			rest := text[strings.IndexByte(text, ':')+1:]
			rest = strings.TrimPrefix(rest, " ")
			if strings.TrimSpace(rest) == "" {
				return nil, fmt.Errorf("%s:%d: empty SQL", path, line)
			}
			out = append(out, Entry{Deny: deny, Line: line})
			sql = []string{rest}
		default:
			return nil, fmt.Errorf("%s:%d: want \"deny:\", \"allow:\", \"|\" or \"#\"", path, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	flush()
	return out, nil
}

// unescapeCorpus replaces the corpus format's {NAME} escapes.
func unescapeCorpus(s string) string {
	if !strings.Contains(s, "{") {
		return s
	}
	return strings.NewReplacer("{NL}", "\n", "{CR}", "\r", "{TAB}", "\t", "{FF}", "\f", "{VT}", "\v", "{SP}", " ").Replace(s)
}
