package session

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/pgtoken/pgtoken/session/pool"
	"github.com/pgtoken/pgtoken/wire"
)

// The process-controlling commands of the admin console, with PgBouncer's
// meaning as far as it maps onto pgtoken: PAUSE, RESUME, SUSPEND, KILL,
// RECONNECT, WAIT_CLOSE. A pool that is held hands out no server
// connection (clients wait, up to pool.wait_timeout); see pool.Hold.

// pauseMode is what PAUSE, KILL or SUSPEND without a database did (under
// poolsMu); pools made while it is not pauseNone start held.
type pauseMode int

const (
	pauseNone      pauseMode = iota
	pausePaused              // PAUSE or KILL of every database
	pauseSuspended           // SUSPEND
)

func (m pauseMode) String() string {
	switch m {
	case pausePaused:
		return "paused"
	case pauseSuspended:
		return "suspended"
	}
	return "active"
}

// errAlreadyPaused is PgBouncer's refusal of SUSPEND and KILL while
// everything is paused or suspended.
func errAlreadyPaused(m pauseMode) error {
	return wire.Errorf(codeNotInPrerequisiteState, "pgtoken is already %s", m).
		WithHint("RESUME ends it.")
}

// Pause stops handing out server connections of one database (all, when db
// is ""), waits until those in use are released, and closes them. If ctx
// ends first the pools stay paused.
func (s *Server) Pause(ctx context.Context, db string) error {
	// A PAUSE may repeat one (to wait again after a cancelled one).
	pools, err := s.hold(db, func(m pauseMode) bool { return m != pauseSuspended })
	if err != nil {
		return err
	}
	for _, p := range pools {
		if err := p.Pause(ctx); err != nil {
			return fmt.Errorf("pause %s: %w", p.Name(), err)
		}
	}
	return nil
}

// Resume ends a PAUSE, KILL or SUSPEND of one database (of everything,
// when db is ""). Resuming what is not paused is an error, as in
// PgBouncer.
func (s *Server) Resume(db string) error {
	if db != "" {
		pools, err := s.poolsNamed(db)
		if err != nil {
			return err
		}
		if !pools[0].Stats().Paused {
			return wire.Errorf(codeNotInPrerequisiteState, "database %q is not paused", db)
		}
		pools[0].Resume()
		return nil
	}
	s.poolsMu.Lock()
	was := s.paused
	s.paused = pauseNone
	pools := s.poolList()
	s.poolsMu.Unlock()
	resumed := 0
	for _, p := range pools {
		if p.Stats().Paused {
			p.Resume()
			resumed++
		}
	}
	if was == pauseNone && resumed == 0 {
		return wire.Errorf(codeNotInPrerequisiteState, "pgtoken is not paused or suspended")
	}
	return nil
}

// Suspend holds every pool at once, without waiting for the transactions
// running or closing server connections; new transactions wait until
// RESUME. PgBouncer suspends for an online restart, which pgtoken does
// with reuse_port instead; like PgBouncer's, a suspension ends by itself
// when the last console leaves.
func (s *Server) Suspend() error {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	if s.paused != pauseNone {
		return errAlreadyPaused(s.paused)
	}
	pools := s.poolList()
	for _, p := range pools {
		if p.Stats().Paused {
			return wire.Errorf(codeNotInPrerequisiteState, "cannot suspend with paused databases").
				WithHint("RESUME them first.")
		}
	}
	s.paused = pauseSuspended
	for _, p := range pools {
		p.Hold()
	}
	return nil
}

// Kill closes every client of one database (all, when db is "") with
// FATAL 57P01 and every server connection at once (those in use as soon as
// their client is gone), and pauses it: new transactions wait until
// RESUME.
func (s *Server) Kill(db string) error {
	pools, err := s.hold(db, func(m pauseMode) bool { return m == pauseNone })
	if err != nil {
		return err
	}
	for _, p := range pools {
		p.Reconnect()
	}
	s.sessMu.RLock()
	var victims []*client
	for _, c := range s.clients {
		if c.sess != nil && (db == "" || c.sess.db == db) {
			victims = append(victims, c)
		}
	}
	s.sessMu.RUnlock()
	for _, c := range victims {
		s.terminate(c, "terminating connection due to administrator command")
	}
	return nil
}

// hold stops handing out server connections of db (of every database,
// pools made later included, when db is ""), unless allowed refuses the
// pause mode in force.
func (s *Server) hold(db string, allowed func(pauseMode) bool) ([]*pool.Pool, error) {
	s.poolsMu.Lock()
	if m := s.paused; !allowed(m) {
		s.poolsMu.Unlock()
		return nil, errAlreadyPaused(m)
	}
	if db == "" {
		s.paused = pausePaused
	}
	s.poolsMu.Unlock()
	pools, err := s.poolsNamed(db)
	if err != nil {
		return nil, err
	}
	for _, p := range pools {
		p.Hold()
	}
	return pools, nil
}

// KillClient closes the client with this id (as SHOW CLIENTS lists it)
// with FATAL 57P01; false if there is none.
func (s *Server) KillClient(id uint32) bool {
	s.sessMu.RLock()
	c := s.clients[id]
	s.sessMu.RUnlock()
	if c == nil {
		return false
	}
	s.terminate(c, "terminating connection due to administrator command")
	return true
}

// Reconnect closes every server connection of one database (all, when db
// is "") once it is not in use; new ones log in as needed.
func (s *Server) Reconnect(db string) error {
	pools, err := s.poolsNamed(db)
	if err != nil {
		return err
	}
	for _, p := range pools {
		p.Reconnect()
	}
	return nil
}

// WaitClose waits until no server connection of one database (all, when
// db is "") is left to close after a RECONNECT, or ctx ends.
func (s *Server) WaitClose(ctx context.Context, db string) error {
	pools, err := s.poolsNamed(db)
	if err != nil {
		return err
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		left := slices.IndexFunc(pools, func(p *pool.Pool) bool { return p.Stats().CloseNeeded > 0 })
		if left < 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// consoleLeft is called when a console ends: the last one to leave ends a
// suspension, as in PgBouncer (nobody would be left to RESUME).
func (s *Server) consoleLeft(c *console) {
	s.sessMu.RLock()
	others := 0
	for _, e := range s.clients {
		if e.con != nil && e.con != c {
			others++
		}
	}
	s.sessMu.RUnlock()
	if others > 0 {
		return
	}
	s.poolsMu.Lock()
	suspended := s.paused == pauseSuspended
	s.poolsMu.Unlock()
	if suspended && s.Resume("") == nil {
		s.log.Info("the last admin console left while pgtoken was suspended: resumed")
	}
}

// pauseState is what SHOW STATE reports.
func (s *Server) pauseState() pauseMode {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	return s.paused
}

// poolsNamed returns the pool of db (made now if db is a mapped database
// no client has used yet), or every pool when db is "".
func (s *Server) poolsNamed(db string) ([]*pool.Pool, error) {
	if db == "" {
		s.poolsMu.Lock()
		defer s.poolsMu.Unlock()
		return s.poolList(), nil
	}
	if IsConsoleDatabase(db) {
		return nil, wire.Errorf(codeNotInPrerequisiteState, "%q is the admin console, not a database with a pool", db)
	}
	s.poolsMu.Lock()
	p, ok := s.pools[db]
	_, mapped := s.cfg.Databases[db]
	s.poolsMu.Unlock()
	if !ok && mapped {
		var err error
		if p, err = s.poolFor(db); err != nil {
			return nil, err
		}
		ok = true
	}
	if !ok {
		return nil, wire.Errorf(codeUndefinedObject, "no pool for database %q (no client has used it)", db)
	}
	return []*pool.Pool{p}, nil
}

// poolList returns the pools, by name (under poolsMu).
func (s *Server) poolList() []*pool.Pool {
	out := make([]*pool.Pool, 0, len(s.pools))
	for _, name := range slices.Sorted(maps.Keys(s.pools)) {
		out = append(out, s.pools[name])
	}
	return out
}
