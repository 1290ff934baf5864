package pool

import "sync"

// staleSet remembers the statements Postgres reported stale on some
// server connection of the pool (a schema change invalidates a statement
// on every connection that has it), so every connection drops its copy
// before its next use. Each mark has an epoch; a connection asks for the
// marks since the epoch it last saw.
type staleSet struct {
	mu    sync.Mutex
	marks []staleMark // oldest first, at most maxStaleMarks
	epoch uint64
}

type staleMark struct {
	name  string
	epoch uint64
}

// maxStaleMarks bounds the memory of stale marks: a connection that has
// not looked for longer finds out on its own (Postgres fails the statement
// once there too).
const maxStaleMarks = 1024

// MarkStale records that the statement called name is stale on every
// server connection of the pool.
func (p *Pool) MarkStale(name string) {
	s := &p.staleStmts
	s.mu.Lock()
	defer s.mu.Unlock()
	s.epoch++
	s.marks = append(s.marks, staleMark{name: name, epoch: s.epoch})
	if len(s.marks) > maxStaleMarks {
		s.marks = append(s.marks[:0], s.marks[len(s.marks)-maxStaleMarks:]...)
	}
}

// StaleSince returns the statements marked stale after epoch seen, and the
// epoch to ask from next time.
func (p *Pool) StaleSince(seen uint64) (names []string, now uint64) {
	s := &p.staleStmts
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch == seen {
		return nil, seen
	}
	for _, m := range s.marks {
		if m.epoch > seen {
			names = append(names, m.name)
		}
	}
	return names, s.epoch
}
