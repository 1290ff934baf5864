package authn

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestCacheHitAndExpiry(t *testing.T) {
	clk := newFakeClock()
	v := newV(t, Config{Secret: testSecret, Leeway: 10 * time.Second})
	v.now = clk.Now
	now := clk.Now()
	tok := sign(t, jwt.SigningMethodHS256, []byte(testSecret), nil, map[string]any{"role": "web_user", "exp": now.Add(10 * time.Minute).Unix()})
	if v.Cached(tok) != nil {
		t.Fatal("Cached knows a token never verified")
	}
	a := mustVerify(t, v, tok)
	b := mustVerify(t, v, tok)
	if a != b {
		t.Fatal("second Verify did not return the cached identity")
	}
	if v.Cached(tok) != a {
		t.Fatal("Cached does not return the verified identity")
	}
	clk.Advance(10*time.Minute + 9*time.Second) // within leeway
	if c := mustVerify(t, v, tok); c != a {
		t.Fatal("cached identity not returned within leeway")
	}
	clk.Advance(time.Second) // exp + leeway reached
	if v.Cached(tok) != nil {
		t.Fatal("Cached returns an expired entry")
	}
	expectReason(t, mustErr(v.Verify(tok)), ReasonExpired)
	if n := v.cache.len(); n != 0 {
		t.Fatalf("cache holds %d entries after expiry", n)
	}
}

func TestCacheNoExp(t *testing.T) {
	clk := newFakeClock()
	v := newV(t, Config{Secret: testSecret})
	v.now = clk.Now
	tok := hs256(t, `{"role":"web_user"}`)
	a := mustVerify(t, v, tok)
	clk.Advance(noExpCacheTTL - time.Second)
	if b := mustVerify(t, v, tok); b != a {
		t.Fatal("not cached")
	}
	clk.Advance(time.Second)
	if c := mustVerify(t, v, tok); c == a {
		t.Fatal("identity of a token without exp still cached after 5 minutes")
	}
}

func TestCacheDisabledAndRejections(t *testing.T) {
	v := newV(t, Config{Secret: testSecret, CacheSize: -1})
	if v.cache != nil {
		t.Fatal("cache not disabled")
	}
	tok := hs256(t, `{"role":"web_user"}`)
	if a, b := mustVerify(t, v, tok), mustVerify(t, v, tok); a == b {
		t.Fatal("identity shared with cache disabled")
	}
	v2 := newV(t, Config{Secret: testSecret})
	bad := hs256(t, `{"role":"admin"}`)
	for range 2 {
		expectReason(t, mustErr(v2.Verify(bad)), ReasonRole)
	}
	if n := v2.cache.len(); n != 0 {
		t.Fatalf("rejection cached: %d entries", n)
	}
}

func TestTokenCacheBounds(t *testing.T) {
	for _, size := range []int{1, 3, 4, 31, 100, 10000} {
		c := newTokenCache(size)
		now := time.Now()
		id := &Identity{Role: "r"}
		for i := range 5 * size {
			k := sha256.Sum256(fmt.Appendf(nil, "tok-%d", i))
			c.put(&k, id, now.Add(time.Hour), c.gen.Load())
		}
		if n := c.len(); n > size || n == 0 {
			t.Errorf("size %d: cache holds %d entries", size, n)
		}
		// The newest entry is always present.
		k := sha256.Sum256(fmt.Appendf(nil, "tok-%d", 5*size-1))
		if c.get(&k, now) != id {
			t.Errorf("size %d: newest entry missing", size)
		}
	}
	if newTokenCache(0) != nil || newTokenCache(-1) != nil {
		t.Fatal("non-positive size should disable the cache")
	}
	if got := len(newTokenCache(10000).shards); got != 32 {
		t.Fatalf("shards = %d", got)
	}
}

func TestTokenCacheGeneration(t *testing.T) {
	c := newTokenCache(10)
	now := time.Now()
	k := sha256.Sum256([]byte("t"))
	gen := c.gen.Load()
	c.clear() // a key change while the token was being verified
	c.put(&k, &Identity{}, now.Add(time.Hour), gen)
	if c.get(&k, now) != nil {
		t.Fatal("put from before clear was stored")
	}
	c.put(&k, &Identity{}, now.Add(time.Hour), c.gen.Load())
	if c.get(&k, now) == nil {
		t.Fatal("put after clear was dropped")
	}
	// Re-putting a key updates it without taking a second slot.
	id := &Identity{Role: "new"}
	c.put(&k, id, now.Add(time.Hour), c.gen.Load())
	if c.get(&k, now) != id || c.len() != 1 {
		t.Fatal("update failed")
	}
}
