package session

import (
	"fmt"
	"sort"
	"strings"
)

// DebugSessions describes every logged-in session's state, for tests that
// need to say where a client is stuck.
func DebugSessions(srv *Server) string {
	srv.sessMu.RLock()
	var sess []*Session
	for _, c := range srv.clients {
		if c.sess != nil {
			sess = append(sess, c.sess)
		}
	}
	srv.sessMu.RUnlock()
	var lines []string
	for _, s := range sess {
		s.mu.Lock()
		var pid uint32
		dead := false
		if s.conn != nil {
			pid, dead = s.conn.PID, s.conn.Dead()
		}
		lines = append(lines, fmt.Sprintf("session %d sub=%q conn=%d dead=%v status=%c batch=%v writing=%v cancelling=%v hold=%v txLost=%v units=[%s] out=%d",
			s.id, s.ident.Sub, pid, dead, s.t.Status(), s.t.InBatch(), s.writing, s.cancelling, s.hold, s.txLost, strings.Join(s.t.Unanswered(), " "), len(s.out.buf)))
		s.mu.Unlock()
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
