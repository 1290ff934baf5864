package pool

import (
	"time"

	"go.uber.org/zap"
)

// Lifecycle is how a pool opens, keeps, checks and closes its server
// connections, with PgBouncer's meaning of each setting. A reload may
// change it on a live pool (SetLifecycle).
type Lifecycle struct {
	// MinSize conns are kept open (idle or not), capped at the pool's
	// size: opened in the background when the pool is made and again after
	// losses (PgBouncer's min_pool_size).
	MinSize int
	// ReserveSize extra conns, beyond the size, may be opened for clients
	// that have waited ReserveTimeout; they are closed when they would go
	// idle (reserve_pool_size, reserve_pool_timeout). A zero ReserveTimeout
	// leaves the reserve unused.
	ReserveSize    int
	ReserveTimeout time.Duration
	// ServerLifetime: a conn connected longer than this is closed when it
	// is given back, never while in use, and an idle one is closed by the
	// janitor; 0 means each conn serves one client once (server_lifetime).
	ServerLifetime time.Duration
	// IdleTimeout: an idle conn unused longer than this is closed, down to
	// MinSize; 0 keeps idle conns (server_idle_timeout).
	IdleTimeout time.Duration
	// CheckDelay: a conn idle at least this long is checked with an empty
	// query before it is handed out, and replaced if it does not answer
	// within the pool's connect timeout; 0 checks every hand-out
	// (server_check_delay).
	CheckDelay time.Duration
}

// Reasons the janitor closes an idle conn, as logged.
const (
	closeLifetime = "server_lifetime"
	closeIdle     = "server_idle_timeout"
	closeSurplus  = "above pool size" // a reserve conn, or the pool shrank
)

// loginRetry is how long the janitor waits after a failed background login
// before it tries again (PgBouncer's server_login_retry default).
const loginRetry = 15 * time.Second

// janitorEvery is how often the janitor looks at the idle conns.
const janitorEvery = time.Second

// idleConn is what one round of maintenance knows of an idle conn.
type idleConn struct {
	born, lastUsed time.Time
}

// closing is one idle conn the janitor closes: its index in the idle list
// and why.
type closing struct {
	i      int
	reason string
}

// plan decides one round of maintenance, without I/O: which idle conns to
// close and how many new ones to open. idle is least recently used first;
// total counts every conn, busy and logging in too; canOpen is false while
// the pool is paused, closed or waiting after a failed login.
func plan(l Lifecycle, size, total int, idle []idleConn, now time.Time, canOpen bool) (closes []closing, open int) {
	keep := min(l.MinSize, size)
	for i, c := range idle {
		var reason string
		switch {
		case l.ServerLifetime > 0 && now.Sub(c.born) >= l.ServerLifetime:
			reason = closeLifetime
		case total > size:
			reason = closeSurplus
		case l.IdleTimeout > 0 && now.Sub(c.lastUsed) >= l.IdleTimeout && total > keep:
			reason = closeIdle
		default:
			continue
		}
		closes = append(closes, closing{i, reason})
		total--
	}
	if canOpen && total < keep {
		open = keep - total
	}
	return closes, open
}

// SetLifecycle changes the pool's lifecycle settings; the janitor applies
// them at once.
func (p *Pool) SetLifecycle(l Lifecycle) {
	p.mu.Lock()
	p.life = l
	p.checkDelay.Store(int64(l.CheckDelay))
	p.grant() // a larger reserve may serve a waiter now
	p.mu.Unlock()
	p.kick()
}

// kick makes the janitor run a round now.
func (p *Pool) kick() {
	select {
	case p.kicks <- struct{}{}:
	default:
	}
}

// janitor runs maintenance every interval, and when kicked, until Close.
func (p *Pool) janitor(every time.Duration) {
	defer p.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.closed:
			return
		case <-t.C:
		case <-p.kicks:
		}
		p.maintain()
	}
}

// maintain runs one round: closes the idle conns plan picks and starts
// background logins up to MinSize. The mutex is released before any
// socket is closed or opened.
func (p *Pool) maintain() {
	now := p.now()
	p.mu.Lock()
	idle := make([]idleConn, len(p.idle))
	for i, c := range p.idle {
		idle[i] = idleConn{born: c.born, lastUsed: time.Unix(0, c.lastUsed.Load())}
	}
	canOpen := !p.paused && !p.isClosed && !now.Before(p.fillAfter)
	closes, open := plan(p.life, p.size, p.total, idle, now, canOpen)
	var closed []*Conn
	if len(closes) > 0 {
		drop := make(map[int]bool, len(closes))
		for _, cl := range closes {
			drop[cl.i] = true
			c := p.idle[cl.i]
			p.retire(c)
			closed = append(closed, c)
			if ce := p.log.Check(zap.DebugLevel, "closing idle server connection"); ce != nil {
				ce.Write(zap.Uint32("pid", c.PID), zap.String("reason", cl.reason))
			}
		}
		kept := p.idle[:0]
		for i, c := range p.idle {
			if !drop[i] {
				kept = append(kept, c)
			}
		}
		clear(p.idle[len(kept):])
		p.idle = kept
	}
	p.total += open
	p.connecting += open
	p.wg.Add(open)
	p.mu.Unlock()
	for _, c := range closed {
		c.Close()
	}
	for range open {
		go p.fill()
	}
}

// fill logs in one conn in the background, on a slot maintain counted, and
// puts it in the pool.
func (p *Pool) fill() {
	defer p.wg.Done()
	c, err := p.connect(p.ctx)
	p.mu.Lock()
	if err = p.opened(c, err); err != nil {
		closing := p.isClosed
		if !closing {
			p.fillAfter = p.now().Add(loginRetry)
		}
		p.mu.Unlock()
		if c != nil {
			_ = c.nc.Close()
		}
		if !closing {
			p.log.Warn("could not open a server connection to keep pool.min_size; retrying later",
				zap.Duration("retry_in", loginRetry), zap.Error(err))
		}
		return
	}
	c.lastUsed.Store(p.now().UnixNano())
	closeIt := p.put(c, p.outdated(c)) // logged in across a Reconnect: closed
	p.mu.Unlock()
	if closeIt {
		c.Close()
		return
	}
	if ce := p.log.Check(zap.DebugLevel, "server connection opened"); ce != nil {
		ce.Write(zap.Uint32("pid", c.PID), zap.String("reason", "pool.min_size"))
	}
}
