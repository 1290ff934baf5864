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
		var units []string
		for i := 0; i < s.q.len(); i++ {
			u := s.q.at(i)
			units = append(units, fmt.Sprintf("%d/%d", u.kind, u.own))
		}
		lines = append(lines, fmt.Sprintf("session %d sub=%q conn=%d dead=%v pending=%d midBatch=%v writing=%v maint=%v status=%c skipping=%v lostBatch=%v txLost=%v cancelling=%d hold=%v units=[%s] out=%d",
			s.id, s.ident.Sub, pid, dead, s.pending, s.midBatch, s.writing, s.maint, s.status, s.skipping, s.lostBatch, s.txLost, s.cancelling, s.hold, strings.Join(units, " "), len(s.out)))
		s.mu.Unlock()
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
