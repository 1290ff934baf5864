package authn

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
)

// Verifier checks tokens and maps their claims to a role and settings. It
// is safe for concurrent use.
type Verifier struct {
	*settings
	secret     string
	pemPaths   []string
	issuer     string
	audience   string
	leeway     time.Duration
	requireExp bool
	log        *zap.Logger
	onRefresh  func(url string, err error)
	now        func() time.Time // replaced in tests

	static       atomic.Pointer[staticKeys]
	jwks         *jwksGroup            // the jwt.jwks URLs; nil without any
	issuers      map[string]*jwksGroup // jwt.jwks_issuers, by issuer without a trailing '/'
	ownTransport *http.Transport

	parser    atomic.Pointer[parserState]
	rebuildMu sync.Mutex
	cache     *tokenCache

	claimsWarned claimWarnings

	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once
}

type parserState struct {
	p    *jwt.Parser
	algs []string
}

// New validates cfg, loads the keys and fetches each HTTP JWKS once,
// waiting up to 10s for it; an unreachable endpoint is logged, not fatal,
// and its keys arrive with a later refresh. Refresh goroutines stop when
// ctx ends or Close is called.
func New(ctx context.Context, cfg Config) (*Verifier, error) {
	s, err := cfg.validate()
	if err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	v := &Verifier{
		settings:   s,
		secret:     cfg.Secret,
		pemPaths:   slices.Clone(cfg.PublicKeys),
		issuer:     cfg.Issuer,
		audience:   cfg.Audience,
		leeway:     cfg.Leeway,
		requireExp: cfg.RequireExp,
		log:        cfg.Logger,
		onRefresh:  cfg.OnJWKSRefresh,
		now:        time.Now,
		cache:      newTokenCache(s.cacheSize),
	}
	if v.log == nil {
		v.log = zap.NewNop()
	}
	if len(cfg.Secret) > 0 && len(cfg.Secret) < 32 {
		v.log.Warn("JWT secret is shorter than 32 bytes; use a longer random secret")
	}
	st, err := loadStatic(v.secret, v.pemPaths, v.fileJWKS)
	if err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	v.static.Store(st)
	v.rebuildParser()

	v.ctx, v.cancel = context.WithCancel(ctx)
	if err := v.startHTTP(cfg.HTTPClient); err != nil {
		v.Close()
		return nil, fmt.Errorf("authn: %w", err)
	}
	if v.KeyCount() == 0 {
		v.log.Warn("no verification key loaded yet; tokens are refused until a JWKS refresh succeeds")
	}
	return v, nil
}

// Close stops the background JWKS refresh. Verify keeps working with the
// keys already loaded.
func (v *Verifier) Close() {
	v.closeOnce.Do(func() {
		v.cancel()
		if v.ownTransport != nil {
			v.ownTransport.CloseIdleConnections()
		}
	})
}

// Reload re-reads the PEM files and file:// JWKS and clears the token
// cache. On error the keys in use are kept. HTTP JWKS refresh on their own.
func (v *Verifier) Reload() error {
	st, err := loadStatic(v.secret, v.pemPaths, v.fileJWKS)
	if err != nil {
		return fmt.Errorf("authn: %w", err)
	}
	v.static.Store(st)
	v.keysChanged()
	return nil
}

// keysChanged is called after the key set changed: it updates the derived
// allowlist and drops cached identities verified with the old keys.
func (v *Verifier) keysChanged() {
	v.rebuildParser()
	if v.cache != nil {
		v.cache.clear()
	}
}

func (v *Verifier) rebuildParser() {
	v.rebuildMu.Lock()
	defer v.rebuildMu.Unlock()
	algs := v.currentAlgs()
	if cur := v.parser.Load(); cur != nil && slices.Equal(cur.algs, algs) {
		return
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(algs), // never nil: an empty list refuses every algorithm
		jwt.WithLeeway(v.leeway),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
		jwt.WithStrictDecoding(),
	}
	if v.issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.issuer))
	}
	if v.audience != "" {
		opts = append(opts, jwt.WithAudience(v.audience))
	}
	if v.requireExp {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	v.parser.Store(&parserState{p: jwt.NewParser(opts...), algs: algs})
	v.log.Debug("token algorithms allowed", zap.Strings("algorithms", algs))
}

// Verify checks a token and returns the identity it grants. A rejection is
// an *Error. Successful results are cached by SHA-256 of the token until
// the token's exp (5 minutes without exp).
func (v *Verifier) Verify(token string) (*Identity, error) {
	if len(token) > v.maxBytes {
		return nil, malformed(fmt.Sprintf("token is longer than %d bytes", v.maxBytes))
	}
	var key cacheKey
	var gen uint64
	if v.cache != nil {
		key = sha256.Sum256([]byte(token))
		if id := v.cache.get(&key, v.now()); id != nil {
			return id, nil
		}
		gen = v.cache.gen.Load()
	}
	id, err := v.verify(token)
	if err != nil {
		return nil, err
	}
	if v.cache != nil {
		expires := v.now().Add(noExpCacheTTL)
		if !id.ExpiresAt.IsZero() {
			expires = id.ExpiresAt.Add(v.leeway)
		}
		v.cache.put(&key, id, expires, gen)
	}
	return id, nil
}

// Cached returns the identity of a token that Verify accepted before and
// still holds in its cache (until the token's exp), or nil. It checks no
// signature: a caller can tell a token that costs nothing to verify from
// one that costs a signature check.
func (v *Verifier) Cached(token string) *Identity {
	if v.cache == nil || len(token) > v.maxBytes {
		return nil
	}
	key := sha256.Sum256([]byte(token))
	return v.cache.get(&key, v.now())
}

// call is the state of one parse: whether golang-jwt got as far as asking
// for a key.
type call struct {
	v      *Verifier
	called bool
}

func (v *Verifier) verify(token string) (*Identity, error) {
	ps := v.parser.Load()
	id, tok, c, err := v.parse(ps.p, token)
	if err == nil {
		return id, nil
	}
	if err.Reason == ReasonAlgorithm && !c.called && v.explicitAlgs == nil && tok != nil && tok.Method != nil {
		// The allowlist is derived from the keys, and a rotation to a new
		// key type is only seen after a refresh: look the kid up (which may
		// refresh) and, if that found a key for this algorithm, parse again.
		if kid, _ := tok.Header["kid"].(string); kid != "" && isSupportedAlg(tok.Method.Alg()) {
			if k := v.refreshedKey(tok, kid); k != nil && k.accepts(tok.Method.Alg()) {
				v.rebuildParser()
				id, _, _, err = v.parse(v.parser.Load().p, token)
				if err == nil {
					return id, nil
				}
			}
		}
	}
	return nil, err
}

func (v *Verifier) parse(p *jwt.Parser, token string) (*Identity, *jwt.Token, *call, *Error) {
	c := &call{v: v}
	claims := &claimSet{wantJSON: v.jsonName != ""}
	tok, err := p.ParseWithClaims(token, claims, c.keyfunc)
	if err != nil {
		return nil, tok, c, v.classify(tok, err, c, claims)
	}
	if !claims.decoded {
		return nil, tok, c, malformed("token claims are not a JSON object")
	}
	id, rerr := v.identity(claims)
	return id, tok, c, rerr
}

// refreshedKey looks kid up for a token the allowlist refused, refreshing
// the HTTP JWKS the token's keys would come from; nil if there are none.
func (v *Verifier) refreshedKey(tok *jwt.Token, kid string) *vkey {
	g, err := v.issuerGroup(tok)
	switch {
	case err != nil:
		return nil
	case g != nil:
		return g.keyByKIDRefresh(kid)
	case v.jwks != nil:
		return v.keyByKIDRefresh(kid)
	}
	return nil
}

// issuerGroup returns the keys of the token's issuer when it is one of
// jwt.jwks_issuers. A token from any other issuer, or with none, is
// checked with the other keys (nil, nil); if there are none it is refused
// here, before any key is looked up or fetched.
func (v *Verifier) issuerGroup(t *jwt.Token) (*jwksGroup, *Error) {
	if len(v.issuers) == 0 {
		return nil, nil
	}
	var iss string
	if c, ok := t.Claims.(*claimSet); ok {
		iss = c.iss
	}
	if g := v.issuers[trimIssuer(iss)]; g != nil && iss != "" {
		return g, nil
	}
	if v.secret != "" || len(v.pemPaths) > 0 || len(v.fileJWKS) > 0 || len(v.httpJWKS) > 0 {
		return nil, nil
	}
	if iss == "" {
		return nil, reject(ReasonIssuer, "token has no iss claim", nil)
	}
	return nil, reject(ReasonIssuer, fmt.Sprintf("token issuer %q is not trusted", clip(iss)), nil)
}

// keyfunc selects the key(s) golang-jwt checks the signature with.
func (c *call) keyfunc(t *jwt.Token) (any, error) {
	c.called = true
	v := c.v
	if _, ok := t.Header["crit"]; ok {
		return nil, malformed("token header has a crit parameter, which is not supported")
	}
	alg := t.Method.Alg()
	var kid string
	if raw, ok := t.Header["kid"]; ok {
		if kid, ok = raw.(string); !ok {
			return nil, malformed("token kid is not a string")
		}
	}
	g, err := v.issuerGroup(t)
	if err != nil {
		return nil, err
	}
	if g != nil { // an issuer of jwt.jwks_issuers: its own keys only
		if kid != "" {
			return keyForKID(g.keyByKIDRefresh(kid), kid, alg)
		}
		if k := g.kidlessKey(alg); k != nil {
			return k.key, nil
		}
		return nil, reject(ReasonUnknownKID, fmt.Sprintf("token has no kid and its issuer's JWKS has no single key for %s", alg), nil)
	}
	// Without any JWKS a kid names nothing pgtoken knows (identity
	// providers set one even on HS256 tokens), so it is ignored and the
	// configured secret and PEM keys decide.
	if kid != "" && (len(v.fileJWKS) > 0 || len(v.httpJWKS) > 0) {
		return keyForKID(v.keyByKIDRefresh(kid), kid, alg)
	}
	keys := v.kidlessKeys(alg)
	switch len(keys) {
	case 0:
		if !slices.Contains(v.currentKeyAlgs(), alg) {
			return nil, reject(ReasonAlgorithm, fmt.Sprintf("token algorithm %s is not allowed: no configured key can check it", alg), nil)
		}
		return nil, reject(ReasonUnknownKID, fmt.Sprintf("token has no kid and no key without a kid can check %s", alg), nil)
	case 1:
		return keys[0], nil
	default:
		set := jwt.VerificationKeySet{Keys: make([]jwt.VerificationKey, len(keys))}
		for i, k := range keys {
			set.Keys[i] = k
		}
		return set, nil
	}
}

// keyForKID returns the key k found for kid, if it can check alg.
func keyForKID(k *vkey, kid, alg string) (any, error) {
	if k == nil {
		return nil, reject(ReasonUnknownKID, fmt.Sprintf("token key id %q is unknown", clip(kid)), nil)
	}
	if !k.accepts(alg) {
		return nil, reject(ReasonAlgorithm, fmt.Sprintf("token algorithm %s does not match key %q", alg, clip(kid)), nil)
	}
	return k.key, nil
}

// classify maps a golang-jwt error to an *Error.
func (v *Verifier) classify(tok *jwt.Token, err error, c *call, claims *claimSet) *Error {
	if e, ok := errors.AsType[*Error](err); ok {
		return e
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		if tok == nil {
			return reject(ReasonMalformed, "token is not three dot-separated segments", err)
		}
		return reject(ReasonMalformed, "token is not base64url-encoded JSON", err)
	case errors.Is(err, jwt.ErrTokenUnverifiable) && !c.called && tok != nil:
		alg, ok := tok.Header["alg"].(string)
		if !ok {
			return reject(ReasonMalformed, "token header has no alg", err)
		}
		return reject(ReasonAlgorithm, fmt.Sprintf("token algorithm %q is not allowed", clip(alg)), err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		if !c.called && tok != nil && tok.Method != nil { // refused by WithValidMethods before any key lookup
			return reject(ReasonAlgorithm, fmt.Sprintf("token algorithm %q is not allowed", clip(tok.Method.Alg())), err)
		}
		return reject(ReasonBadSignature, "", err)
	case errors.Is(err, jwt.ErrTokenExpired):
		return reject(ReasonExpired, "", err)
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return reject(ReasonNotYetValid, "", err)
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return reject(ReasonIssuer, fmt.Sprintf("token issuer %q is wrong", clip(claims.iss)), err)
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return reject(ReasonAudience, "", err)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		switch {
		case v.requireExp && claims.exp == nil:
			return reject(ReasonMalformed, "token has no exp claim", err)
		case v.issuer != "" && claims.iss == "":
			return reject(ReasonIssuer, "token has no iss claim", err)
		case v.audience != "":
			return reject(ReasonAudience, "token has no aud claim", err)
		}
	}
	return reject(ReasonMalformed, "", err)
}

// identity resolves the role and builds the settings of a verified token.
func (v *Verifier) identity(c *claimSet) (*Identity, *Error) {
	named, err := applyNamespaces(c.members, v.namespaces)
	if err != nil {
		return nil, err
	}
	role, err := v.role(c, named)
	if err != nil {
		return nil, err
	}
	id := &Identity{
		Role: role,
		Sub:  c.stringClaim("sub"),
		JTI:  c.stringClaim("jti"),
	}
	if v.prefix != "" {
		var issues claimIssues
		id.Settings, issues = claimSettings(named, v.prefix)
		if !issues.empty() {
			v.claimsWarned.log(v.log, &issues)
		}
	}
	if v.jsonName != "" {
		id.Settings = append(id.Settings, Setting{Name: v.jsonName, Value: string(c.compact)})
	}
	if exp := c.expiry(); !exp.IsZero() {
		id.ExpiresAt = exp.UTC()
	}
	return id, nil
}

// role follows the role path from the token's own top-level claims, or,
// when the first name is not among them, from the names the namespaces
// gave (so .x-hasura-default-role finds the lifted Hasura claim).
func (v *Verifier) role(c *claimSet, named []namedClaim) (string, *Error) {
	name := v.rolePath.first()
	var val any
	found := false
	raw, ok := c.lookup(name)
	if !ok {
		raw, ok = lookupNamed(named, name)
	}
	if ok {
		var top any
		if err := decodeJSON(raw, &top); err != nil {
			return "", reject(ReasonMalformed, "token claims are not valid JSON", err)
		}
		val, found = v.rolePath.Lookup(map[string]any{name: top})
	}
	if !found {
		if v.anonRole != "" {
			return v.anonRole, nil
		}
		return "", reject(ReasonNoRole, fmt.Sprintf("token has no role claim %s", v.rolePath), nil)
	}
	role, ok := val.(string)
	if !ok {
		return "", malformed(fmt.Sprintf("token role claim %s is not a string", v.rolePath))
	}
	if len(role) > maxRoleBytes {
		return "", reject(ReasonRole, fmt.Sprintf("token role %q is not allowed (longer than %d bytes)", clip(role), maxRoleBytes), nil)
	}
	if _, ok := v.allowed[role]; !ok {
		return "", reject(ReasonRole, fmt.Sprintf("token role %q is not allowed", role), nil)
	}
	return role, nil
}

// maxClaimWarnings bounds how many distinct claim issues a Verifier
// remembers having logged.
const maxClaimWarnings = 256

// claimWarnings logs claims left out of the settings: at WARN the first
// time a Verifier meets a given set of issues, at DEBUG after that, so that
// every login of every user of a misconfigured issuer does not log a warning.
type claimWarnings struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

func (w *claimWarnings) log(log *zap.Logger, issues *claimIssues) {
	key := issues.key()
	w.mu.Lock()
	_, seen := w.seen[key]
	if !seen && len(w.seen) < maxClaimWarnings {
		if w.seen == nil {
			w.seen = map[string]struct{}{}
		}
		w.seen[key] = struct{}{}
	}
	w.mu.Unlock()
	level := zap.WarnLevel
	if seen {
		level = zap.DebugLevel
	}
	if ce := log.Check(level, "token claims left without a setting (see \"How claim names become settings\" in docs/CONFIG.md)"); ce != nil {
		ce.Write(zap.Strings("unmappable", issues.unmappable), zap.Strings("shadowed", issues.shadowed))
	}
}

func decodeJSON(raw []byte, dst any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	return d.Decode(dst)
}
