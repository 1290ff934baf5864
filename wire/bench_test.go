package wire

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

// dataRowStream returns a server answer to a query: RowDescription, rows
// DataRows of cols text columns of width bytes each, CommandComplete and
// ReadyForQuery.
func dataRowStream(rows, cols, width int) []byte {
	var b []byte
	// RowDescription with cols int4-ish text columns.
	at := len(b)
	b = append(b, 'T', 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(cols))
	for i := 0; i < cols; i++ {
		b = append(b, 'c', byte('a'+i%26), 0)
		b = binary.BigEndian.AppendUint32(b, 0)      // table oid
		b = binary.BigEndian.AppendUint16(b, 0)      // column
		b = binary.BigEndian.AppendUint32(b, 25)     // text
		b = binary.BigEndian.AppendUint16(b, 0xffff) // typlen -1
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
		b = binary.BigEndian.AppendUint16(b, 0) // text format
	}
	binary.BigEndian.PutUint32(b[at+1:], uint32(len(b)-at-1))
	val := bytes.Repeat([]byte("x"), width)
	for r := 0; r < rows; r++ {
		at := len(b)
		b = append(b, 'D', 0, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(cols))
		for c := 0; c < cols; c++ {
			b = binary.BigEndian.AppendUint32(b, uint32(width))
			b = append(b, val...)
		}
		binary.BigEndian.PutUint32(b[at+1:], uint32(len(b)-at-1))
	}
	b = AppendCommandComplete(b, "SELECT 1000")
	rfq := ReadyForQuery('I')
	return append(b, rfq[:]...)
}

// relayAll does what the proxy does with every message of a result it
// relays as bytes: peek the header, take the whole frame, append it to the
// client's buffered writer; large ones are streamed. It flushes at the end.
func relayAll(r *Reader, w *Writer) error {
	for {
		typ, n, err := r.Next()
		if err != nil {
			return err
		}
		if n > 64<<10 {
			if err := r.Stream(w); err != nil {
				return err
			}
		} else {
			f, err := r.Frame()
			if err != nil {
				return err
			}
			if _, err := w.Write(f); err != nil {
				return err
			}
		}
		if typ == 'Z' {
			return w.Flush()
		}
	}
}

// BenchmarkRelayDataRows relays a DataRow-heavy result (1,000 rows of four
// 32-byte columns) from a Reader to a Writer, as pgtoken does for every
// result. Steady state must not allocate.
func BenchmarkRelayDataRows(b *testing.B) {
	for _, tc := range []struct {
		name              string
		rows, cols, width int
	}{
		{"1000x4x32B", 1000, 4, 32},
		{"10x1x100KB", 10, 1, 100 << 10}, // streamed
	} {
		b.Run(tc.name, func(b *testing.B) {
			stream := dataRowStream(tc.rows, tc.cols, tc.width)
			src := bytes.NewReader(stream)
			r := NewReader(src, 32<<10, 1<<20)
			w := NewWriter(io.Discard, 64<<10)
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for b.Loop() {
				src.Reset(stream)
				r.Reset(src)
				if err := relayAll(r, w); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestRelayDataRowsAllocs pins the benchmark's claim: relaying rows costs
// no allocation once the buffers exist.
func TestRelayDataRowsAllocs(t *testing.T) {
	stream := dataRowStream(1000, 4, 32)
	src := bytes.NewReader(stream)
	r := NewReader(src, 32<<10, 1<<20)
	w := NewWriter(io.Discard, 64<<10)
	allocs := testing.AllocsPerRun(50, func() {
		src.Reset(stream)
		r.Reset(src)
		if err := relayAll(r, w); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("relaying 1,000 DataRows: %.1f allocs per result, want 0", allocs)
	}
}
