package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// chunked hands out its bytes a few at a time, as a network peer might.
type chunked struct {
	data  []byte
	sizes []byte // cycled: each Read returns at most 1+sizes[i] bytes
	i     int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(c.sizes) > 0 {
		n = min(n, 1+int(c.sizes[c.i%len(c.sizes)]))
		c.i++
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

// countingWriter counts what Stream writes.
type countingWriter struct{ n int }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// FuzzReader drives a Reader over arbitrary bytes with an arbitrary
// sequence of calls (Next, Frame, Body, Stream, Skip, ReadStartup). It must
// never panic, return a frame that disagrees with its header, or hold a
// buffer larger than its initial size or the limit plus a header.
func FuzzReader(f *testing.F) {
	msg := func(typ byte, body string) []byte {
		b := append([]byte{typ}, binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))...)
		return append(b, body...)
	}
	startup := append(binary.BigEndian.AppendUint32(nil, 8+10), 0, 3, 0, 0)
	startup = append(startup, "user\x00u\x00\x00\x00"...)
	for _, seed := range []struct {
		data   []byte
		ops    []byte
		sizes  []byte
		limit  uint16
		bufLen uint16
	}{
		{msg('Q', "select 1\x00"), []byte{0, 1}, nil, 100, 64},
		{append(msg('Q', "select 1\x00"), msg('S', "")...), []byte{0, 1, 0, 2}, []byte{0, 3}, 100, 64},
		{msg('Q', string(bytes.Repeat([]byte("x"), 500))), []byte{0, 1, 4, 0}, []byte{7}, 100, 64},
		{msg('d', string(bytes.Repeat([]byte("y"), 300))), []byte{0, 3, 0}, []byte{1, 2, 250}, 16, 64},
		{append([]byte{'Q'}, 0xff, 0xff, 0xff, 0xff), []byte{0}, nil, 100, 64},
		{append([]byte{'Q'}, 0, 0, 0, 3), []byte{0}, nil, 100, 64},
		{startup, []byte{5, 0}, nil, 100, 64},
		{[]byte{0x7f, 0xff, 0xff, 0xff}, []byte{5}, nil, 10000, 64},
		{[]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 'p', 0, 0, 0, 6, 'x', 0}, []byte{5, 0, 2}, []byte{0}, 100, 64},
	} {
		f.Add(seed.data, seed.ops, seed.sizes, seed.limit, seed.bufLen)
	}
	f.Fuzz(func(t *testing.T, data, ops, sizes []byte, limit, bufLen uint16) {
		r := NewReader(&chunked{data: data, sizes: sizes}, int(bufLen), int(limit))
		maxBuf := max(int(bufLen), 64, int(limit)+5)
		if len(ops) > 64 {
			ops = ops[:64]
		}
		curN := -1     // body length of the message whose header Next returned
		typed := false // Next was called: the startup phase is over
		for _, op := range ops {
			var err error
			switch op % 6 {
			case 0:
				var typ byte
				var n int
				typ, n, err = r.Next()
				typed = true
				if err == nil {
					curN = n
					if n < 0 || n > 1<<30 {
						t.Fatalf("Next: length %d for %q", n, typ)
					}
				}
			case 1, 2:
				var b []byte
				if op%6 == 1 {
					b, err = r.Frame()
				} else {
					b, err = r.Body()
				}
				if err == nil {
					want := curN
					if op%6 == 1 {
						want += 5
						if got := int(binary.BigEndian.Uint32(b[1:5])) - 4; got != curN {
							t.Fatalf("Frame header says %d bytes, Next said %d", got, curN)
						}
					}
					if len(b) != want {
						t.Fatalf("got %d bytes, want %d", len(b), want)
					}
					curN = -1
				} else if errors.Is(err, ErrMessageTooLarge) && curN <= int(limit) {
					t.Fatalf("too large at %d bytes, limit %d", curN, limit)
				}
			case 3:
				var w countingWriter
				err = r.Stream(&w)
				if err == nil {
					if w.n != curN+5 {
						t.Fatalf("Stream wrote %d bytes, want %d", w.n, curN+5)
					}
					curN = -1
				}
			case 4:
				err = r.Skip()
				if err == nil {
					curN = -1
				}
			case 5:
				if typed {
					continue // as in login.go: no startup packet after a typed message
				}
				var b []byte
				b, err = r.ReadStartup(int(limit))
				if err == nil && len(b)+4 > int(limit) {
					t.Fatalf("ReadStartup returned %d bytes, limit %d", len(b)+4, limit)
				}
				curN = -1
			}
			if len(r.buf) > maxBuf {
				t.Fatalf("buffer grew to %d bytes (initial %d, limit %d)", len(r.buf), bufLen, limit)
			}
			if r.start < 0 || r.start > r.end || r.end > len(r.buf) {
				t.Fatalf("bad state: start %d end %d len %d", r.start, r.end, len(r.buf))
			}
			if err != nil && !errors.Is(err, ErrMessageTooLarge) {
				return // the session ends on any other error
			}
		}
	})
}
