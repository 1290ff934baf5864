package authn

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Config configures a Verifier. At least one key source (Secret, JWKS,
// PublicKeys or JWKSIssuers) and at least one AllowedRoles entry are
// required.
type Config struct {
	Secret     string   // HS256/384/512 shared secret (the string's bytes); "" = none
	JWKS       []string // file:///path or http(s)://... JWKS URLs (RSA, EC, OKP/Ed25519 public keys; oct keys = HS secrets with a kid)
	PublicKeys []string // paths of PEM public-key files (RSA, ECDSA P-256/384/521, Ed25519); kid-less
	// JWKSIssuers are issuers (http(s)://host[/path]) whose tokens are
	// checked with the keys at <iss>/.well-known/jwks.json, and with no
	// other key; a trailing '/' does not matter. Tokens from other issuers
	// are checked with the other keys, and refused if there are none.
	JWKSIssuers []string

	// Algorithms is the allowlist; empty means every algorithm for which a
	// key is configured (HS* for Secret or oct JWKs, RS* and PS* for RSA
	// keys, ES256/384/512 per curve, EdDSA for Ed25519). "none" is never
	// accepted and New refuses it.
	Algorithms []string

	Issuer     string        // checked when non-empty
	Audience   string        // checked when non-empty
	Leeway     time.Duration // applied to exp and nbf
	RequireExp bool          // exp required

	RoleClaim    string   // claim path (see RolePath); "" means ".role"
	AnonRole     string   // used when the role claim is absent; "" = refuse such tokens; must be in AllowedRoles
	AllowedRoles []string // the role must be one of these (exact match)

	ClaimsPrefix string // per-claim settings are named ClaimsPrefix.<claim>; "" = no per-claim settings
	ClaimsJSON   string // setting holding the whole claims object as JSON; "" = none
	// ClaimsNamespaces are lifted (a listed claim holding an object is
	// replaced by its members) or stripped (a listed prefix of a claim's
	// name is removed) before claims become settings and before the role
	// claim is looked up; see claimnames.go.
	ClaimsNamespaces []string

	CacheSize     int // verified-token cache entries; 0 = 10000; <0 disables
	MaxTokenBytes int // 0 = 16384; longer tokens are malformed

	JWKSRefreshInterval time.Duration // 0 = 1h
	JWKSUnknownKIDWait  time.Duration // how long Verify may wait for a refresh on an unknown kid; 0 = 1s

	HTTPClient    *http.Client                // optional, for HTTP JWKS
	Logger        *zap.Logger                 // optional
	OnJWKSRefresh func(url string, err error) // optional; called after each HTTP JWKS refresh attempt
}

// Setting is one run-time parameter to set for the transaction.
type Setting struct{ Name, Value string }

// Identity is the result of a successful Verify. It is shared (the cache
// hands out the same value to every caller) and must not be modified.
type Identity struct {
	Role      string
	Sub, JTI  string    // for logs; "" if absent; a non-string value as JSON text
	ExpiresAt time.Time // zero if the token has no exp
	Settings  []Setting // per-claim settings sorted by name ignoring case, then the ClaimsJSON setting; the role is not among them
}

const (
	defaultCacheSize     = 10000
	defaultMaxTokenBytes = 16384
	defaultRefresh       = time.Hour
	defaultKIDWait       = time.Second
	maxRoleBytes         = 63 // Postgres NAMEDATALEN-1
)

// settings is a validated Config.
type settings struct {
	rolePath     RolePath
	allowed      map[string]struct{}
	anonRole     string
	prefix       string
	jsonName     string
	namespaces   []string
	cacheSize    int
	maxBytes     int
	refreshEvery time.Duration
	kidWait      time.Duration
	explicitAlgs []string // nil: derived from the configured keys
	fileJWKS     []jwksFile
	httpJWKS     []string
	jwksIssuers  []string // without a trailing '/'
}

type jwksFile struct{ url, path string }

func (c *Config) validate() (*settings, error) {
	s := &settings{
		cacheSize:    c.CacheSize,
		maxBytes:     c.MaxTokenBytes,
		refreshEvery: c.JWKSRefreshInterval,
		kidWait:      c.JWKSUnknownKIDWait,
		anonRole:     c.AnonRole,
	}
	if s.cacheSize == 0 {
		s.cacheSize = defaultCacheSize
	}
	switch {
	case s.maxBytes == 0:
		s.maxBytes = defaultMaxTokenBytes
	case s.maxBytes < 0:
		return nil, errors.New("MaxTokenBytes must not be negative")
	}
	switch {
	case s.refreshEvery == 0:
		s.refreshEvery = defaultRefresh
	case s.refreshEvery < 0:
		return nil, errors.New("JWKSRefreshInterval must not be negative")
	}
	switch {
	case s.kidWait == 0:
		s.kidWait = defaultKIDWait
	case s.kidWait < 0:
		return nil, errors.New("JWKSUnknownKIDWait must not be negative")
	}
	if c.Leeway < 0 {
		return nil, errors.New("invalid Leeway: must not be negative")
	}

	path := c.RoleClaim
	if path == "" {
		path = ".role"
	}
	rp, err := ParseRolePath(path)
	if err != nil {
		return nil, fmt.Errorf("RoleClaim: %w", err)
	}
	s.rolePath = rp

	if len(c.AllowedRoles) == 0 {
		return nil, errors.New("AllowedRoles must name at least one role")
	}
	s.allowed = make(map[string]struct{}, len(c.AllowedRoles))
	for _, r := range c.AllowedRoles {
		if err := checkRoleName(r); err != nil {
			return nil, fmt.Errorf("AllowedRoles: %w", err)
		}
		s.allowed[r] = struct{}{}
	}
	if c.AnonRole != "" {
		if err := checkRoleName(c.AnonRole); err != nil {
			return nil, fmt.Errorf("AnonRole: %w", err)
		}
		if _, ok := s.allowed[c.AnonRole]; !ok {
			return nil, fmt.Errorf("AnonRole %q is not in AllowedRoles", c.AnonRole)
		}
	}

	if c.ClaimsPrefix != "" && !ValidSettingName(c.ClaimsPrefix) {
		return nil, fmt.Errorf("ClaimsPrefix %q is not a dotted identifier path such as jwt.claims", c.ClaimsPrefix)
	}
	if c.ClaimsJSON != "" {
		if !ValidSettingName(c.ClaimsJSON) || !strings.Contains(c.ClaimsJSON, ".") {
			return nil, fmt.Errorf("ClaimsJSON %q is not a dotted identifier path such as request.jwt.claims", c.ClaimsJSON)
		}
		if c.ClaimsPrefix != "" {
			rest, ok := strings.CutPrefix(strings.ToLower(c.ClaimsJSON), strings.ToLower(c.ClaimsPrefix)+".")
			if ok && !strings.Contains(rest, ".") {
				return nil, fmt.Errorf("ClaimsJSON %q would collide with the setting for claim %q", c.ClaimsJSON, rest)
			}
		}
	}
	s.prefix, s.jsonName = c.ClaimsPrefix, c.ClaimsJSON
	for _, ns := range c.ClaimsNamespaces {
		switch {
		case ns == "":
			return nil, errors.New("ClaimsNamespaces: a namespace is empty")
		case slices.Contains(s.namespaces, ns):
			return nil, fmt.Errorf("ClaimsNamespaces: %q is listed twice", ns)
		}
		s.namespaces = append(s.namespaces, ns)
	}

	if len(c.Algorithms) > 0 {
		s.explicitAlgs = []string{}
		for _, a := range c.Algorithms {
			if strings.EqualFold(a, "none") {
				return nil, errors.New(`invalid Algorithms: "none" is never accepted`)
			}
			if !isSupportedAlg(a) {
				return nil, fmt.Errorf("invalid Algorithms: unsupported algorithm %q (supported: %s)", a, strings.Join(supportedAlgs[:], ", "))
			}
			if !slices.Contains(s.explicitAlgs, a) {
				s.explicitAlgs = append(s.explicitAlgs, a)
			}
		}
	}

	for _, raw := range c.JWKS {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("JWKS URL: %w", err)
		}
		switch u.Scheme {
		case "file":
			if u.Host != "" && u.Host != "localhost" || u.Path == "" {
				return nil, fmt.Errorf("JWKS URL %q: use file:///absolute/path", u.Redacted())
			}
			s.fileJWKS = append(s.fileJWKS, jwksFile{url: raw, path: u.Path})
		case "http", "https":
			if u.Host == "" {
				return nil, fmt.Errorf("JWKS URL %q has no host", u.Redacted())
			}
			if !slices.Contains(s.httpJWKS, raw) {
				s.httpJWKS = append(s.httpJWKS, raw)
			}
		default:
			return nil, fmt.Errorf("JWKS URL %q: scheme must be file, http or https", u.Redacted())
		}
	}
	for _, raw := range c.JWKSIssuers {
		u, err := url.Parse(raw)
		switch {
		case err != nil:
			return nil, fmt.Errorf("JWKSIssuers: %w", err)
		case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
			return nil, fmt.Errorf("JWKSIssuers: %q is not an http(s)://host issuer URL", u.Redacted())
		case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
			return nil, fmt.Errorf("JWKSIssuers: %q: an issuer has no user, query or fragment", u.Redacted())
		}
		iss := trimIssuer(raw)
		if slices.Contains(s.jwksIssuers, iss) {
			return nil, fmt.Errorf("JWKSIssuers: %q is listed twice", raw)
		}
		if c.Issuer != "" && trimIssuer(c.Issuer) != iss {
			return nil, fmt.Errorf("JWKSIssuers: %q can never be accepted: Issuer requires %q", raw, c.Issuer)
		}
		s.jwksIssuers = append(s.jwksIssuers, iss)
	}
	if c.Secret == "" && len(c.JWKS) == 0 && len(c.PublicKeys) == 0 && len(c.JWKSIssuers) == 0 {
		return nil, errors.New("no verification key configured: set Secret, JWKS, PublicKeys or JWKSIssuers")
	}
	return s, nil
}

// checkRoleName checks that r can be a Postgres role name.
func checkRoleName(r string) error {
	switch {
	case r == "":
		return errors.New("role name is empty")
	case len(r) > maxRoleBytes:
		return fmt.Errorf("role name %q is longer than %d bytes", clip(r), maxRoleBytes)
	case strings.IndexByte(r, 0) >= 0:
		return errors.New("role name contains a NUL character")
	}
	return nil
}
