package session

import (
	"fmt"
	"strings"
)

// DescribeSessions describes every logged-in session's state (from
// Server.DebugSessions), one line each, for tests that need to say where a
// client is stuck.
func DescribeSessions(srv *Server) string {
	var lines []string
	for _, d := range srv.DebugSessions() {
		var units []string
		for _, u := range d.Tracker.Units {
			units = append(units, u.Kind+"/"+u.Own)
		}
		tr := d.Tracker
		lines = append(lines, fmt.Sprintf("session %d sub=%q conn=%d dead=%v pending=%d batch=%v writing=%v status=%s skipping=%v dropping=%v txLost=%v cancelling=%v hold=%v units=[%s] out=%d flushing=%v",
			d.ID, d.Sub, d.ServerPID, d.ServerDead, tr.Pending, tr.InBatch, d.Writing, tr.Status, tr.Skipping, tr.Dropping, d.TxLost, d.Cancelling, d.Hold, strings.Join(units, " "), d.ClientOut, d.Flushing))
	}
	return strings.Join(lines, "\n")
}
