package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestLogComplaints picks warnings, errors, race reports and panics out of
// pgtoken's log in either format, and only from where the last look ended.
func TestLogComplaints(t *testing.T) {
	log := filepath.Join(t.TempDir(), "pgtoken.log")
	first := "2026-12-05T17:39:58.663Z\tINFO\tpgtoken/main.go:159\topen file limit\t{\"limit\": 20000}\n" +
		"2026-12-05T17:39:58.700Z\tWARN\tsession/handler.go:1\tprelude failed\t{}\n" +
		`{"level":"info","msg":"client connected"}` + "\n" +
		`{"level":"error","msg":"internal error"}` + "\n"
	if err := os.WriteFile(log, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	got, off := logComplaints(log, 0)
	want := "2026-12-05T17:39:58.700Z\tWARN\tsession/handler.go:1\tprelude failed\t{}\n" + `{"level":"error","msg":"internal error"}` + "\n"
	if string(got) != want || off != int64(len(first)) {
		t.Fatalf("first look: %q at %d, want %q at %d", got, off, want, len(first))
	}
	more := "==================\nWARNING: DATA RACE\nRead at 0x00c000 by goroutine 7:\n==================\n" +
		`{"level":"info","msg":"client disconnected"}` + "\n" + "panic: boom\n\ngoroutine 1 [running]:\n" + `{"level":"warn","ms` // a line still being written
	f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(more); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, off2 := logComplaints(log, off)
	want = "WARNING: DATA RACE\nRead at 0x00c000 by goroutine 7:\n==================\npanic: boom\n\ngoroutine 1 [running]:\n"
	if string(got) != want {
		t.Errorf("second look: %q, want %q", got, want)
	}
	if partial := int64(len(first) + len(more)); off2 >= partial {
		t.Errorf("the partial last line was consumed (offset %d of %d)", off2, partial)
	}
	if got, _ := logComplaints(log, off2); len(got) != 0 {
		t.Errorf("a partial line counted: %q", got)
	}
}
