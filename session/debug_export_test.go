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
		for _, u := range d.Units {
			units = append(units, u.Kind+"/"+u.Own)
		}
		lines = append(lines, fmt.Sprintf("session %d sub=%q conn=%d dead=%v pending=%d midBatch=%v writing=%v maint=%v status=%s skipping=%v lostBatch=%v txLost=%v cancelling=%d hold=%v units=[%s] out=%d flushing=%v",
			d.ID, d.Sub, d.ServerPID, d.ServerDead, d.Pending, d.MidBatch, d.Writing, d.Maint, d.Status, d.Skipping, d.LostBatch, d.TxLost, d.Cancelling, d.Hold, strings.Join(units, " "), d.ClientOut, d.Flushing))
	}
	return strings.Join(lines, "\n")
}
