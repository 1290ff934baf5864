package app

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestLogLines: JSON lines carry an ISO 8601 time, no caller file and no
// empty fields; console lines the same, as text.
func TestLogLines(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			log, _, err := newLogger("info", format, zapcore.AddSync(&buf))
			if err != nil {
				t.Fatal(err)
			}
			log = log.With(zap.String("sub", "alice"), zap.String("jti", ""))
			log.Info("client connected", zap.String("application_name", ""), zap.String("database", "app"), zap.Int("n", 0))
			if ce := log.Check(zap.InfoLevel, "checked"); ce != nil {
				ce.Write(zap.String("empty", ""), zap.ByteString("bytes", nil))
			}
			log.Debug("not at info")
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if len(lines) != 2 {
				t.Fatalf("%d lines, want 2:\n%s", len(lines), buf.String())
			}
			for _, line := range lines {
				for _, leak := range []string{"log_test.go", "jti", "application_name", "empty", "bytes"} {
					if strings.Contains(line, leak) {
						t.Errorf("line has %q: %s", leak, line)
					}
				}
				if !strings.Contains(line, "alice") {
					t.Errorf("line lost a field: %s", line)
				}
				var ts string
				if format == "json" {
					var m map[string]any
					if err := json.Unmarshal([]byte(line), &m); err != nil {
						t.Fatalf("%s: %v", line, err)
					}
					if _, ok := m["caller"]; ok {
						t.Errorf("caller in %s", line)
					}
					ts, _ = m["ts"].(string)
				} else {
					ts, _, _ = strings.Cut(line, "\t")
				}
				at, err := time.Parse(time.RFC3339, ts)
				if err != nil || time.Since(at) > time.Minute || !strings.Contains(ts, ".") {
					t.Errorf("time %q is not ISO 8601 with milliseconds: %v", ts, err)
				}
			}
			if !strings.Contains(lines[0], "database") || !strings.Contains(lines[0], `"n": 0`) && !strings.Contains(lines[0], `"n":0`) {
				t.Errorf("non-empty fields dropped: %s", lines[0])
			}
		})
	}
	if _, _, err := newLogger("info", "xml", zapcore.AddSync(&bytes.Buffer{})); err == nil {
		t.Error("log_format xml accepted")
	}
}
