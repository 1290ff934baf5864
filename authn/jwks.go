package authn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
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

// jwksGroup is HTTP JWKS documents whose keys are looked up together and
// refreshed together: the jwt.jwks URLs, or one issuer's
// <iss>/.well-known/jwks.json. jwkset refreshes each in the background; a
// kid that no key of the group has makes the group fetch its documents
// again, one refresh at once and then one per unknownKIDRefreshEvery, per
// group.
type jwksGroup struct {
	v          *Verifier
	sources    []*httpSource
	store      jwkset.Storage
	refreshMu  sync.Mutex
	refreshing chan struct{} // closed when the running unknown-kid refresh ends
}

// startHTTP starts the jwt.jwks group and one group per issuer of
// jwt.jwks_issuers, each fetched once now. Every group is in place before
// the first fetch, whose keys change the derived algorithm allowlist.
func (v *Verifier) startHTTP(cfgClient *http.Client) error {
	if len(v.httpJWKS) == 0 && len(v.jwksIssuers) == 0 {
		return nil
	}
	var groups []*jwksGroup
	if len(v.httpJWKS) > 0 {
		v.jwks = v.newJWKSGroup(v.httpJWKS)
		groups = append(groups, v.jwks)
	}
	v.issuers = make(map[string]*jwksGroup, len(v.jwksIssuers))
	for _, iss := range v.jwksIssuers {
		g := v.newJWKSGroup([]string{iss + "/.well-known/jwks.json"})
		v.issuers[iss] = g
		groups = append(groups, g)
	}
	client := v.httpClient(cfgClient)
	for _, g := range groups {
		if err := g.start(client); err != nil {
			return err
		}
	}
	return nil
}

// trimIssuer is an issuer as jwt.jwks_issuers are kept: without a trailing
// '/', so that https://tenant.auth0.com/ (Auth0's iss) and
// https://tenant.auth0.com are one issuer, whose keys are at
// https://tenant.auth0.com/.well-known/jwks.json.
func trimIssuer(iss string) string { return strings.TrimSuffix(iss, "/") }

// httpClient is Config.HTTPClient, or a client of v's own (whose idle
// connections Close closes).
func (v *Verifier) httpClient(cfg *http.Client) *http.Client {
	if cfg != nil {
		return cfg
	}
	if v.ownTransport == nil {
		v.ownTransport = http.DefaultTransport.(*http.Transport).Clone()
	}
	return &http.Client{Transport: v.ownTransport}
}

// newJWKSGroup returns the group of urls, not fetched yet.
func (v *Verifier) newJWKSGroup(urls []string) *jwksGroup {
	g := &jwksGroup{v: v, sources: make([]*httpSource, len(urls))}
	for i, u := range urls {
		g.sources[i] = &httpSource{Storage: jwkset.NewMemoryStorage(), url: u, v: v}
	}
	return g
}

// start fetches each of the group's documents once (a failure is logged,
// not fatal) and starts jwkset's refresh goroutines, bound to v.ctx.
func (g *jwksGroup) start(client *http.Client) error {
	v := g.v
	stores := make(map[string]jwkset.Storage, len(g.sources))
	for _, src := range g.sources {
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
	g.store = store
	return nil
}

// snapshots calls fn with the keys of each document fetched so far. A nil
// group has none.
func (g *jwksGroup) snapshots(fn func(*keySnapshot)) {
	if g == nil {
		return
	}
	for _, s := range g.sources {
		if snap := s.keys.Load(); snap != nil {
			fn(snap)
		}
	}
}

// keyByKID finds a key by kid among the group's keys.
func (g *jwksGroup) keyByKID(kid string) *vkey {
	var found *vkey
	g.snapshots(func(s *keySnapshot) {
		if found == nil {
			found = s.byKID[kid]
		}
	})
	return found
}

// refreshFor lets jwkset refresh the group's documents after find(kid)
// found nothing (rate-limited) and returns find(kid) after that, waiting at
// most JWKSUnknownKIDWait. While one such refresh runs, other misses wait
// for it instead of being turned away by the rate limit, so that a burst of
// tokens from a newly rotated key is accepted.
func (g *jwksGroup) refreshFor(kid string, find func(string) *vkey) *vkey {
	v := g.v
	ctx, cancel := context.WithTimeout(v.ctx, v.kidWait)
	defer cancel()
	g.refreshMu.Lock()
	if running := g.refreshing; running != nil {
		g.refreshMu.Unlock()
		select {
		case <-running:
		case <-ctx.Done():
		}
		return find(kid)
	}
	done := make(chan struct{})
	g.refreshing = done
	g.refreshMu.Unlock()
	defer func() {
		g.refreshMu.Lock()
		g.refreshing = nil
		g.refreshMu.Unlock()
		close(done)
	}()
	if k := find(kid); k != nil { // a refresh may have just finished
		return k
	}
	if _, err := g.store.KeyRead(ctx, kid); err != nil {
		if !errors.Is(err, jwkset.ErrKeyNotFound) {
			v.log.Debug("no JWKS refresh for unknown kid", zap.String("kid", clip(kid)), zap.Error(err))
		}
		return nil
	}
	return find(kid)
}

// keyByKIDRefresh is keyByKID, but on a miss with HTTP JWKS configured it
// refreshes them (see jwksGroup.refreshFor).
func (v *Verifier) keyByKIDRefresh(kid string) *vkey {
	if k := v.keyByKID(kid); k != nil || v.jwks == nil {
		return k
	}
	return v.jwks.refreshFor(kid, v.keyByKID)
}

// keyByKIDRefresh is the group's keyByKID, refreshing on a miss: for a
// token from an issuer of jwt.jwks_issuers, whose keys are that issuer's
// only.
func (g *jwksGroup) keyByKIDRefresh(kid string) *vkey {
	if k := g.keyByKID(kid); k != nil {
		return k
	}
	return g.refreshFor(kid, g.keyByKID)
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	u.RawQuery, u.Fragment = "", ""
	return u.Redacted()
}
