package app

import (
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger builds the zap logger the configuration asks for (log_level,
// log_format), writing to standard error.
func NewLogger(level, format string) (*zap.Logger, error) {
	log, _, err := NewLoggerLevel(level, format)
	return log, err
}

// NewLoggerLevel is NewLogger that also returns the level, which a reload
// can change (Options.Level).
func NewLoggerLevel(level, format string) (*zap.Logger, zap.AtomicLevel, error) {
	return newLogger(level, format, zapcore.Lock(os.Stderr))
}

// timeLayout is ISO 8601 (RFC 3339) with milliseconds and the UTC offset.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

// encoderConfig is the log line layout: the time as ISO 8601, no caller
// file (a log line is for operators; a stack trace is not needed to read
// it), no stack traces.
func encoderConfig(format string) zapcore.EncoderConfig {
	ec := zap.NewProductionEncoderConfig()
	if format == "console" {
		ec = zap.NewDevelopmentEncoderConfig()
	}
	ec.EncodeTime = zapcore.TimeEncoderOfLayout(timeLayout)
	ec.CallerKey = zapcore.OmitKey
	ec.StacktraceKey = zapcore.OmitKey
	return ec
}

func newLogger(level, format string, w zapcore.WriteSyncer) (*zap.Logger, zap.AtomicLevel, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("log_level: %w", err)
	}
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(encoderConfig(format))
	case "console":
		enc = zapcore.NewConsoleEncoder(encoderConfig(format))
	default:
		return nil, zap.AtomicLevel{}, fmt.Errorf("log_format: want console or json, got %q", format)
	}
	al := zap.NewAtomicLevelAt(lvl)
	core := omitEmpty{zapcore.NewCore(enc, w, al)}
	return zap.New(core, zap.ErrorOutput(w)), al, nil
}

// omitEmpty leaves out fields whose value is an empty string (a token
// without jti, a client without application_name), so a log line shows
// only what is known.
type omitEmpty struct{ zapcore.Core }

func (c omitEmpty) With(fields []zapcore.Field) zapcore.Core {
	return omitEmpty{c.Core.With(nonEmpty(fields))}
}

func (c omitEmpty) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c omitEmpty) Write(e zapcore.Entry, fields []zapcore.Field) error {
	return c.Core.Write(e, nonEmpty(fields))
}

func isEmpty(f zapcore.Field) bool {
	switch f.Type {
	case zapcore.StringType:
		return f.String == ""
	case zapcore.ByteStringType, zapcore.BinaryType:
		b, _ := f.Interface.([]byte)
		return len(b) == 0
	}
	return false
}

// nonEmpty returns fields without the empty ones (fields itself when none
// is, the common case: no copy).
func nonEmpty(fields []zapcore.Field) []zapcore.Field {
	for i, f := range fields {
		if !isEmpty(f) {
			continue
		}
		out := append(make([]zapcore.Field, 0, len(fields)-1), fields[:i]...)
		for _, g := range fields[i+1:] {
			if !isEmpty(g) {
				out = append(out, g)
			}
		}
		return out
	}
	return fields
}

// NewLoggerTo is NewLogger writing to w (pgtoken check's warnings).
func NewLoggerTo(w io.Writer, level, format string) (*zap.Logger, error) {
	log, _, err := newLogger(level, format, zapcore.Lock(zapcore.AddSync(w)))
	return log, err
}
