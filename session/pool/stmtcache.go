package pool

import "container/list"

// DefaultStatementCache is how many prepared statements a server connection
// keeps by default.
const DefaultStatementCache = 256

// StmtCache records which of pgtoken's prepared statements exist on one
// server connection, least recently used first out. Its owner (the holder
// of the conn) serializes access.
type StmtCache struct {
	cap   int
	order *list.List // of *stmtEntry, most recent at the front
	byKey map[string]*list.Element
}

type stmtEntry struct {
	name string
	used uint64 // batch generation of the last use
}

// NewStmtCache returns a cache of at most capacity statements.
func NewStmtCache(capacity int) *StmtCache {
	if capacity <= 0 {
		capacity = DefaultStatementCache
	}
	return &StmtCache{cap: capacity, order: list.New(), byKey: map[string]*list.Element{}}
}

// Use reports whether the statement called name exists, marking it used in
// batch gen.
func (c *StmtCache) Use(name string, gen uint64) bool {
	e, ok := c.byKey[name]
	if !ok {
		return false
	}
	e.Value.(*stmtEntry).used = gen
	c.order.MoveToFront(e)
	return true
}

// Add records a statement prepared in batch gen and returns the names that
// must be closed to stay within capacity. A statement used in the same batch
// is never evicted (the batch may still bind it), so the cache may exceed
// its capacity until the next batch.
func (c *StmtCache) Add(name string, gen uint64) (evict []string) {
	if e, ok := c.byKey[name]; ok {
		e.Value.(*stmtEntry).used = gen
		c.order.MoveToFront(e)
		return nil
	}
	c.byKey[name] = c.order.PushFront(&stmtEntry{name: name, used: gen})
	for c.order.Len() > c.cap {
		last := c.order.Back()
		se := last.Value.(*stmtEntry)
		if se.used == gen {
			break
		}
		c.order.Remove(last)
		delete(c.byKey, se.name)
		evict = append(evict, se.name)
	}
	return evict
}

// Remove forgets a statement (its Parse failed, or it was closed) and
// reports whether it was recorded.
func (c *StmtCache) Remove(name string) bool {
	e, ok := c.byKey[name]
	if ok {
		c.order.Remove(e)
		delete(c.byKey, name)
	}
	return ok
}

// Clear forgets everything (after DISCARD ALL).
func (c *StmtCache) Clear() {
	c.order.Init()
	clear(c.byKey)
}

// Len reports how many statements are recorded.
func (c *StmtCache) Len() int { return c.order.Len() }
