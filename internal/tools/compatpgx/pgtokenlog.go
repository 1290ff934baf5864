package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// LogGroup is how often pgtoken logged one kind of warning or error.
type LogGroup struct {
	Text  string // level, message and, when the entry has them, SQLSTATE and server message
	Count int
}

// SummarizeLog groups the WARN and ERROR entries of pgtoken's log (zap's
// console encoding: time, level, caller, message, then the fields as JSON,
// separated by tabs), most frequent first. A defect that makes no pgx test
// fail can still show here, e.g. a setting pgtoken fails to replay.
func SummarizeLog(r io.Reader) ([]LogGroup, error) {
	counts := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), "\t", 5)
		if len(f) < 4 || (f[1] != "WARN" && f[1] != "ERROR") {
			continue
		}
		text := f[1] + " " + f[3]
		if len(f) == 5 {
			var fields struct {
				SQLState string `json:"sqlstate"`
				Message  string `json:"message"`
				Error    string `json:"error"`
			}
			if json.Unmarshal([]byte(f[4]), &fields) == nil {
				switch {
				case fields.SQLState != "":
					text += fmt.Sprintf(": %s (SQLSTATE %s)", fields.Message, fields.SQLState)
				case fields.Error != "":
					text += ": " + fields.Error
				}
			}
		}
		counts[Normalize(text)]++
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	out := make([]LogGroup, 0, len(counts))
	for t, n := range counts {
		out = append(out, LogGroup{Text: t, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Text < out[j].Text
	})
	return out, nil
}
