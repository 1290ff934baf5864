package session

import (
	"testing"
	"time"
)

func TestAverages(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cur, older statTotals
		dur        time.Duration
		want       statTotals
	}{
		{
			name:  "rates per second, times per event",
			cur:   statTotals{assignments: 130, xacts: 120, queries: 300, xactTime: 1_200_000, queryTime: 600_000, waitTime: 3_000},
			older: statTotals{assignments: 10, xacts: 0, queries: 0, xactTime: 0, queryTime: 0, waitTime: 600},
			dur:   time.Minute,
			// 120 assignments, 120 transactions, 300 queries in 60 s; 1.2 s
			// of transactions over 120 of them; 2400 µs of waiting over
			// 120 assignments.
			want: statTotals{assignments: 2, xacts: 2, queries: 5, xactTime: 10_000, queryTime: 2_000, waitTime: 20},
		},
		{
			name:  "nothing happened: no division by zero",
			cur:   statTotals{xacts: 7, xactTime: 700, waitTime: 5},
			older: statTotals{xacts: 7, xactTime: 700, waitTime: 5},
			dur:   time.Minute,
		},
		{
			name: "no time has passed",
			cur:  statTotals{xacts: 7},
			dur:  0,
		},
		{
			name: "under a second: rates are scaled up",
			cur:  statTotals{queries: 5, received: 1000},
			dur:  500 * time.Millisecond,
			want: statTotals{queries: 10, received: 2000},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := averages(tc.cur, tc.older, tc.dur); got != tc.want {
				t.Errorf("averages:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestStatsWindowAveragesFromTheOlderBoundary(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	w := newStatsWindow(t0)
	older, stamp := w.since()
	if older["db"] != (statTotals{}) || !stamp.Equal(t0.Add(-time.Second)) {
		t.Fatalf("at start: %v at %v, want zero totals a second before the start", older, stamp)
	}
	w.rotate(t0.Add(time.Minute), map[string]statTotals{"db": {xacts: 60}})
	if older, stamp = w.since(); older["db"] != (statTotals{}) || !stamp.Equal(t0) {
		t.Fatalf("after one period: %v at %v, want the start's", older, stamp)
	}
	w.rotate(t0.Add(2*time.Minute), map[string]statTotals{"db": {xacts: 180}})
	if older, stamp = w.since(); older["db"].xacts != 60 || !stamp.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after two periods: %v at %v, want the first boundary's", older, stamp)
	}
}
