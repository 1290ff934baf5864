package authn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

const (
	// unknownKIDRefreshEvery limits refreshes triggered by unknown kids
	// (one at once, then one per period), so that tokens with random kids
	// cannot make pgtoken hammer the JWKS endpoint.
	unknownKIDRefreshEvery = 30 * time.Second
	// httpRefreshTimeout bounds one background JWKS request.
	httpRefreshTimeout = 10 * time.Second
)

// readJWKSFile parses a JWKS document with keyfunc.
func readJWKSFile(path string) ([]jwkset.JWK, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kf, err := keyfunc.NewJWKSetJSON(raw)
	if err != nil {
		return nil, err
	}
	return kf.Storage().KeyReadAll(context.Background())
}

// httpSource is the storage jwkset refreshes one HTTP JWKS into. It keeps
// an indexed snapshot of the usable keys beside jwkset's own copy.
type httpSource struct {
	jwkset.Storage
	url  string
	v    *Verifier
	keys atomic.Pointer[keySnapshot]
}

// KeyReplaceAll is called by jwkset after each successful fetch.
func (s *httpSource) KeyReplaceAll(ctx context.Context, given []jwkset.JWK) error {
	if err := s.Storage.KeyReplaceAll(ctx, given); err != nil {
		return err
	}
	snap := newSnapshot(given)
	old := s.keys.Swap(snap)
	changed := old == nil || old.fingerprint != snap.fingerprint
	s.v.log.Debug("JWKS refreshed", zap.String("url", redactURL(s.url)), zap.Int("keys", snap.n), zap.Bool("changed", changed))
	if changed {
		s.v.keysChanged()
	}
	if s.v.onRefresh != nil {
		s.v.onRefresh(s.url, nil)
	}
	return nil
}

func (s *httpSource) refreshFailed(_ context.Context, err error) {
	s.v.log.Warn("JWKS refresh failed; keeping the keys fetched before", zap.String("url", redactURL(s.url)), zap.Error(err))
	if s.v.onRefresh != nil {
		s.v.onRefresh(s.url, err)
	}
}

// startHTTP fetches each HTTP JWKS once (a failure is logged, not fatal)
// and starts jwkset's refresh goroutines, bound to v.ctx.
func (v *Verifier) startHTTP(urls []string, client *http.Client) error {
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		v.ownTransport = tr
		client = &http.Client{Transport: tr}
	}
	v.http = make([]*httpSource, len(urls))
	for i, u := range urls {
		v.http[i] = &httpSource{Storage: jwkset.NewMemoryStorage(), url: u, v: v}
	}
	stores := make(map[string]jwkset.Storage, len(urls))
	for _, src := range v.http {
		st, err := jwkset.NewStorageFromHTTP(src.url, jwkset.HTTPClientStorageOptions{
			Client:                    client,
			Ctx:                       v.ctx,
			HTTPTimeout:               httpRefreshTimeout,
			NoErrorReturnFirstHTTPReq: true,
			RefreshErrorHandler:       src.refreshFailed,
			RefreshInterval:           v.refreshEvery,
			Storage:                   src,
		})
		if err != nil {
			return fmt.Errorf("JWKS %s: %w", redactURL(src.url), err)
		}
		stores[src.url] = st
	}
	store, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs:          stores,
		RateLimitWaitMax:  v.kidWait,
		RefreshUnknownKID: rate.NewLimiter(rate.Every(unknownKIDRefreshEvery), 1),
	})
	if err != nil {
		return err
	}
	v.httpStore = store
	return nil
}

// keyByKIDRefresh is keyByKID, but on a miss with HTTP JWKS configured it
// lets jwkset refresh them (rate-limited) and looks again, waiting at most
// JWKSUnknownKIDWait. While one such refresh runs, other misses wait for it
// instead of being turned away by the rate limit, so that a burst of tokens
// from a newly rotated key is accepted.
func (v *Verifier) keyByKIDRefresh(kid string) *vkey {
	if k := v.keyByKID(kid); k != nil || v.httpStore == nil {
		return k
	}
	ctx, cancel := context.WithTimeout(v.ctx, v.kidWait)
	defer cancel()
	v.refreshMu.Lock()
	if running := v.refreshing; running != nil {
		v.refreshMu.Unlock()
		select {
		case <-running:
		case <-ctx.Done():
		}
		return v.keyByKID(kid)
	}
	done := make(chan struct{})
	v.refreshing = done
	v.refreshMu.Unlock()
	defer func() {
		v.refreshMu.Lock()
		v.refreshing = nil
		v.refreshMu.Unlock()
		close(done)
	}()
	if k := v.keyByKID(kid); k != nil { // a refresh may have just finished
		return k
	}
	if _, err := v.httpStore.KeyRead(ctx, kid); err != nil {
		if !errors.Is(err, jwkset.ErrKeyNotFound) {
			v.log.Debug("no JWKS refresh for unknown kid", zap.String("kid", clip(kid)), zap.Error(err))
		}
		return nil
	}
	return v.keyByKID(kid)
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	u.RawQuery, u.Fragment = "", ""
	return u.Redacted()
}
