package session

import (
	"time"

	"github.com/pgtoken/pgtoken/session/pool"
)

// SetPoolLifecycle changes the lifecycle settings of the pools there are
// and of those made later (a reload; pool sizes go through Resize).
func (s *Server) SetPoolLifecycle(l pool.Lifecycle) {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	s.cfg.PoolLifecycle = l
	for _, p := range s.pools {
		p.SetLifecycle(l)
	}
}

// ClientTimeouts are the client-side timeouts a reload may change (0: off).
type ClientTimeouts struct {
	Idle  time.Duration // a client idle outside a transaction longer is closed
	Query time.Duration // a query running longer is cancelled
}

// SetClientTimeouts changes the client timeouts for every session, from
// its next wait on.
func (s *Server) SetClientTimeouts(t ClientTimeouts) { s.timeouts.Store(&t) }

// ClientTimeouts returns the client timeouts in force.
func (s *Server) ClientTimeouts() ClientTimeouts { return *s.timeouts.Load() }
