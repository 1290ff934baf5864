package pool

// Available reports whether Acquire would most likely return at once: a
// conn is idle, or fewer than the maximum exist, and nobody waits.
func (p *Pool) Available() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.paused && !p.isClosed && len(p.waiters) == 0 && (len(p.idle) > 0 || p.total < p.size)
}
