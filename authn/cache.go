package authn

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// noExpCacheTTL is how long a verified token without exp stays cached.
const noExpCacheTTL = 5 * time.Minute

type cacheKey = [sha256.Size]byte

type cacheEntry struct {
	id      *Identity
	expires time.Time // the entry is stale from this instant on
}

// tokenCache maps SHA-256(token) to the verified Identity. It is split into
// shards, each with its own mutex, map and FIFO ring used for eviction.
type tokenCache struct {
	shards []cacheShard
	mask   uint64
	gen    atomic.Uint64 // bumped by clear; puts from an older generation are dropped
}

type cacheShard struct {
	mu   sync.Mutex
	m    map[cacheKey]cacheEntry
	ring []cacheKey // insertion order; len(ring) <= cap(ring) = shard capacity
	next int        // next ring slot to overwrite once the ring is full
	_    [40]byte   // keep neighbouring shards' mutexes off one cache line
}

// newTokenCache returns a cache holding at most size entries, or nil if
// size < 1.
func newTokenCache(size int) *tokenCache {
	if size < 1 {
		return nil
	}
	n := 1
	for n < 32 && n*2 <= size {
		n *= 2
	}
	c := &tokenCache{shards: make([]cacheShard, n), mask: uint64(n - 1)}
	per := size / n
	for i := range c.shards {
		c.shards[i].m = make(map[cacheKey]cacheEntry)
		c.shards[i].ring = make([]cacheKey, 0, per)
	}
	return c
}

func (c *tokenCache) shard(k *cacheKey) *cacheShard {
	return &c.shards[binary.LittleEndian.Uint64(k[:8])&c.mask]
}

// get returns the cached identity, or nil if absent or stale at now.
func (c *tokenCache) get(k *cacheKey, now time.Time) *Identity {
	s := c.shard(k)
	s.mu.Lock()
	e, ok := s.m[*k]
	if ok && !now.Before(e.expires) {
		delete(s.m, *k)
		ok = false
	}
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return e.id
}

// put stores id unless the cache was cleared since generation gen was read.
func (c *tokenCache) put(k *cacheKey, id *Identity, expires time.Time, gen uint64) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.gen.Load() != gen {
		return
	}
	if _, ok := s.m[*k]; ok {
		s.m[*k] = cacheEntry{id: id, expires: expires}
		return
	}
	if cap(s.ring) == 0 {
		return
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, *k)
	} else {
		delete(s.m, s.ring[s.next])
		s.ring[s.next] = *k
		s.next = (s.next + 1) % len(s.ring)
	}
	s.m[*k] = cacheEntry{id: id, expires: expires}
}

// clear drops every entry and makes in-flight puts from before the call
// no-ops.
func (c *tokenCache) clear() {
	c.gen.Add(1)
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.m)
		s.ring = s.ring[:0]
		s.next = 0
		s.mu.Unlock()
	}
}

// len returns the number of entries, stale ones included.
func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
