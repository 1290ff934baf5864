package session

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS: PgBouncer's totals
// since start and its averages over the last stats period.

// statsPeriod is PgBouncer's default stats_period: the averages are those
// of the last full period and the time since.
const statsPeriod = time.Minute

// statTotals are one database's totals, in PgBouncer's units (counts,
// bytes, microseconds). Bytes and prepared-statement counts stay 0:
// pgtoken does not count them.
type statTotals struct {
	assignments, xacts, queries int64
	received, sent              int64
	xactTime, queryTime         int64
	waitTime                    int64
	clientParses, serverParses  int64
	binds                       int64
}

// add sums o into t.
func (t *statTotals) add(o statTotals) {
	t.assignments += o.assignments
	t.xacts += o.xacts
	t.queries += o.queries
	t.received += o.received
	t.sent += o.sent
	t.xactTime += o.xactTime
	t.queryTime += o.queryTime
	t.waitTime += o.waitTime
	t.clientParses += o.clientParses
	t.serverParses += o.serverParses
	t.binds += o.binds
}

// averages computes PgBouncer's averages between older and cur, taken dur
// apart: counts and bytes per second; transaction, query and wait times
// per transaction, query and server assignment (calc_average in
// PgBouncer's stats.c).
func averages(cur, older statTotals, dur time.Duration) statTotals {
	var avg statTotals
	us := dur.Microseconds()
	if us <= 0 {
		return avg
	}
	rate := func(c, o int64) int64 { return (c - o) * 1_000_000 / us }
	per := func(c, o, n int64) int64 {
		if n <= 0 {
			return 0
		}
		return (c - o) / n
	}
	xacts, queries, assignments := cur.xacts-older.xacts, cur.queries-older.queries, cur.assignments-older.assignments
	avg.assignments = rate(cur.assignments, older.assignments)
	avg.xacts = rate(cur.xacts, older.xacts)
	avg.queries = rate(cur.queries, older.queries)
	avg.received = rate(cur.received, older.received)
	avg.sent = rate(cur.sent, older.sent)
	avg.xactTime = per(cur.xactTime, older.xactTime, xacts)
	avg.queryTime = per(cur.queryTime, older.queryTime, queries)
	avg.waitTime = per(cur.waitTime, older.waitTime, assignments)
	avg.clientParses = rate(cur.clientParses, older.clientParses)
	avg.serverParses = rate(cur.serverParses, older.serverParses)
	avg.binds = rate(cur.binds, older.binds)
	return avg
}

// statsWindow keeps the totals of the last two period boundaries, as
// PgBouncer's refresh_stats does: averages are taken between the older
// one and now.
type statsWindow struct {
	mu                 sync.Mutex
	older, newer       map[string]statTotals
	oldStamp, newStamp time.Time
}

func newStatsWindow(now time.Time) *statsWindow {
	// As PgBouncer: at start the averages run from a second before.
	return &statsWindow{oldStamp: now.Add(-time.Second), newStamp: now}
}

// rotate records the totals at a period boundary.
func (w *statsWindow) rotate(now time.Time, cur map[string]statTotals) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.older, w.newer = w.newer, cur
	w.oldStamp, w.newStamp = w.newStamp, now
}

// since returns the older totals and when they were taken.
func (w *statsWindow) since() (map[string]statTotals, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.older, w.oldStamp
}

// refreshStats rotates the window every period until the server stops.
func (s *Server) refreshStats(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			s.stats.rotate(now, s.statTotals())
		}
	}
}

// statTotals reads every pool's totals.
func (s *Server) statTotals() map[string]statTotals {
	out := map[string]statTotals{}
	for _, p := range s.Stats().Pools {
		out[p.Database] = statTotals{
			assignments: p.Assignments,
			xacts:       p.Transactions,
			queries:     p.Queries,
			xactTime:    p.TransactionTime.Microseconds(),
			waitTime:    p.WaitTime.Microseconds(),
		}
	}
	return out
}

// Which columns SHOW STATS and its relatives have.
type statsKind int

const (
	statsAll statsKind = iota
	statsTotals
	statsAverages
)

// The column names of the figures, in statTotals.values' order, of SHOW
// STATS (totals, then averages), STATS_TOTALS, STATS_AVERAGES, and the row
// names of TOTALS: PgBouncer's, unchanged.
var (
	statsTotalNames = []string{"total_server_assignment_count", "total_xact_count", "total_query_count",
		"total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
		"total_client_parse_count", "total_server_parse_count", "total_bind_count"}
	statsAvgNames = []string{"avg_server_assignment_count", "avg_xact_count", "avg_query_count",
		"avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
		"avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"}
	statsTotalsNames = []string{"server_assignment_count", "xact_count", "query_count",
		"bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time",
		"client_parse_count", "server_parse_count", "bind_count"}
	statsAveragesNames = []string{"server_assignment_count", "xact_count", "query_count",
		"bytes_received", "bytes_sent", "xact_time", "query_time", "wait_time",
		"avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"}
	totalsNames = []string{"server_assignment_count", "xact_count", "query_count",
		"client_bytes", "server_bytes", "xact_time", "query_time", "wait_time",
		"ps_client_parse_count", "ps_server_parse_count", "ps_bind_count"}
)

func (t statTotals) values() []any {
	return []any{t.assignments, t.xacts, t.queries, t.received, t.sent,
		t.xactTime, t.queryTime, t.waitTime, t.clientParses, t.serverParses, t.binds}
}

func (s *Server) showStats(kind statsKind) *result {
	cur := s.statTotals()
	older, stamp := s.stats.since()
	dur := time.Since(stamp)
	names := []string{"database"}
	switch kind {
	case statsAll:
		names = append(names, statsTotalNames...)
		names = append(names, statsAvgNames...)
		// total_requests: PgBouncer's name for total_query_count before
		// 1.8, which Debian 12's prometheus-pgbouncer-exporter still reads.
		names = append(names, "total_requests")
	case statsTotals:
		names = append(names, statsTotalsNames...)
	case statsAverages:
		names = append(names, statsAveragesNames...)
	}
	rs := &result{cols: columns("s"+strings.Repeat("N", len(names)-1), names...)}
	for _, db := range slices.Sorted(maps.Keys(cur)) {
		t := cur[db]
		row := []any{db}
		switch kind {
		case statsAll:
			row = append(row, t.values()...)
			row = append(row, averages(t, older[db], dur).values()...)
			row = append(row, t.queries)
		case statsTotals:
			row = append(row, t.values()...)
		case statsAverages:
			row = append(row, averages(t, older[db], dur).values()...)
		}
		rs.add(row...)
	}
	return rs
}

// showTotals is SHOW TOTALS: SHOW STATS over all databases, one row per
// figure.
func (s *Server) showTotals() *result {
	cur := s.statTotals()
	older, stamp := s.stats.since()
	var t, o statTotals
	for db, c := range cur {
		t.add(c)
		o.add(older[db])
	}
	avg := averages(t, o, time.Since(stamp))
	rs := &result{cols: columns("sN", "name", "value")}
	tv, av := t.values(), avg.values()
	for i, n := range totalsNames {
		rs.add("total_"+n, tv[i])
	}
	for i, n := range totalsNames {
		rs.add("avg_"+n, av[i])
	}
	return rs
}
