// Package config reads pgtoken's YAML configuration, overlays environment
// variables (PGTOKEN_<SECTION>_<KEY>) and validates it. Defaults live in
// Default, the single source the docs are generated from.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.yaml.in/yaml/v3"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/session/lockdown"
)

// Config is the whole configuration file.
//
// A field tagged reload:"yes" takes effect on SIGHUP (or the console's
// RELOAD) without a restart; pgtoken logs a change to any other.
type Config struct {
	Listen          string              `yaml:"listen" doc:"address clients connect to"`
	ReusePort       bool                `yaml:"reuse_port" doc:"set SO_REUSEPORT on the listeners, so that several pgtoken processes can share the port (rolling restarts)"`
	Upstream        string              `yaml:"upstream" doc:"server connection string (any DSN pgconn accepts); its own database is served under its name (see serve_upstream_database)" secret:"password"`
	LogLevel        string              `yaml:"log_level" doc:"debug, info, warn or error" reload:"yes"`
	LogFormat       string              `yaml:"log_format" doc:"console or json"`
	MetricsListen   string              `yaml:"metrics_listen" doc:"host:port for /metrics, /healthz, /readyz and /debug/sessions; empty disables"`
	ShutdownTimeout Duration            `yaml:"shutdown_timeout" doc:"on SIGTERM, how long transactions in flight may take before their clients are closed" reload:"yes"`
	AdminRoles      StringList          `yaml:"admin_roles" doc:"token roles that may use the admin console (database pgtoken, or pgbouncer as PgBouncer's tools expect); each must be in jwt.allowed_roles; empty disables the console" reload:"yes"`
	Pool            Pool                `yaml:"pool"`
	Databases       map[string]Database `yaml:"databases" doc:"client database name → its own upstream and pool size; only these names and the upstream's own database are served, any other is refused (3D000)"`
	ServeUpstream   bool                `yaml:"serve_upstream_database" doc:"serve the database of upstream under its own name, besides the keys of databases; false serves only those"`
	PeerID          int                 `yaml:"peer_id" doc:"this pgtoken's id (0-7) among peers behind one load balancer; it goes into every cancel key"`
	Peers           PeerMap             `yaml:"peers" doc:"peer id → host:port of each pgtoken peer, where a cancel request for one of its clients is forwarded (env: 0=host:port,1=host:port)" reload:"yes"`
	JWT             JWT                 `yaml:"jwt"`
	Claims          Claims              `yaml:"claims"`
	TLS             TLS                 `yaml:"tls"`
	Guard           Guard               `yaml:"guard"`
	Checks          Checks              `yaml:"checks"`
	Limits          Limits              `yaml:"limits"`
}

// Pool configures server connections.
type Pool struct {
	Mode                   string   `yaml:"mode" doc:"transaction (a server connection per transaction) or session"`
	Size                   int      `yaml:"size" doc:"server connections per database" reload:"yes"`
	WaitTimeout            Duration `yaml:"wait_timeout" doc:"how long a client waits for a free server connection"`
	ConnectTimeout         Duration `yaml:"connect_timeout" doc:"how long one login to the server may take"`
	IdleTransactionTimeout Duration `yaml:"idle_transaction_timeout" doc:"a client idle inside a transaction longer than this is disconnected; 0 disables"`
	StatementCache         int      `yaml:"statement_cache" doc:"prepared statements kept per server connection (least recently used are closed)"`
	// The lifecycle of server connections, with PgBouncer's meaning of its
	// settings of the same names (session/pool/lifecycle.go).
	MinSize           int      `yaml:"min_size" doc:"server connections per database kept open, opened in the background from the database's first login on and after losses; capped at the pool size (PgBouncer's min_pool_size)" reload:"yes"`
	ReserveSize       int      `yaml:"reserve_size" doc:"extra server connections per database, beyond its pool size, for clients that waited reserve_timeout; closed when they would go idle; 0 disables (reserve_pool_size)" reload:"yes"`
	ReserveTimeout    Duration `yaml:"reserve_timeout" doc:"how long a client waits before a reserve connection may be opened for it; 0 disables the reserve (reserve_pool_timeout)" reload:"yes"`
	ServerLifetime    Duration `yaml:"server_lifetime" doc:"a server connection connected longer than this is closed when it goes back to the pool, never while in use (e.g. to move to a new primary after a failover); 0 uses each connection once (server_lifetime)" reload:"yes"`
	ServerIdleTimeout Duration `yaml:"server_idle_timeout" doc:"a server connection idle in the pool longer than this is closed, down to min_size; 0 disables (server_idle_timeout)" reload:"yes"`
	ServerCheckDelay  Duration `yaml:"server_check_delay" doc:"a server connection idle longer than this is checked with an empty query before a client gets it, and replaced if it does not answer within connect_timeout; 0 checks every time (server_check_delay)" reload:"yes"`
	ClientIdleTimeout Duration `yaml:"client_idle_timeout" doc:"a client connection idle (outside a transaction) longer than this is closed; 0 disables (client_idle_timeout)" reload:"yes"`
	QueryTimeout      Duration `yaml:"query_timeout" doc:"a query running longer than this is cancelled; set it a little above the server's statement_timeout, for network problems only; 0 disables (query_timeout)" reload:"yes"`
}

// Database maps one client database name to an upstream.
type Database struct {
	Upstream string `yaml:"upstream" secret:"password"`
	PoolSize int    `yaml:"pool_size"` // 0: pool.size
}

// JWT configures token verification.
type JWT struct {
	Secret       string     `yaml:"secret" doc:"HS256/384/512 shared secret" secret:"all" reload:"yes"`
	JWKS         StringList `yaml:"jwks" doc:"JWKS URL(s): file:///path or https://issuer/.well-known/jwks.json" reload:"yes"`
	JWKSIssuers  StringList `yaml:"jwks_issuers" doc:"issuers (https://issuer.example) whose tokens are checked with the keys at <iss>/.well-known/jwks.json, and only with those (fetched at start, refreshed like jwt.jwks, also on an unknown kid); tokens with another iss, or none, are checked with the other keys, and refused without any request if there are none" reload:"yes"`
	PublicKeys   StringList `yaml:"public_keys" doc:"PEM public-key files (RSA, ECDSA, Ed25519)" reload:"yes"`
	Algorithms   StringList `yaml:"algorithms" doc:"allowed algorithms; empty = every family with a configured key" reload:"yes"`
	Issuer       string     `yaml:"issuer" doc:"required iss, when set" reload:"yes"`
	Audience     string     `yaml:"audience" doc:"required aud, when set" reload:"yes"`
	Leeway       Duration   `yaml:"leeway" doc:"clock skew allowed for nbf; exp is enforced exactly at login and before each transaction, and a transaction still open this long after exp ends the session (FATAL 28000, rolled back)" reload:"yes"`
	RequireExp   bool       `yaml:"require_exp" doc:"refuse tokens without exp" reload:"yes"`
	RoleClaim    string     `yaml:"role_claim" doc:"path of the role claim, PostgREST style" reload:"yes"`
	AnonRole     string     `yaml:"anon_role" doc:"role for tokens without a role claim; it must also be in jwt.allowed_roles; empty refuses such tokens" reload:"yes"`
	AllowedRoles StringList `yaml:"allowed_roles" doc:"roles a token may name" reload:"yes"`
	CacheSize    int        `yaml:"cache_size" doc:"verified tokens kept (by hash, until exp)" reload:"yes"`
	// PrivilegedRoles lifts the lock-down checks of a role (session/roles.go).
	PrivilegedRoles StringList `yaml:"privileged_roles" doc:"roles a token may name whatever the lock-down checks find about them (a superuser, BYPASSRLS, TEMPORARY, ...; the upstream login's own findings still refuse them); each must be in jwt.allowed_roles" reload:"yes"`
}

// Claims configures how claims reach Postgres.
type Claims struct {
	Prefix     string     `yaml:"prefix" doc:"each claim becomes the setting <prefix>.<name>, its name mapped as the section below says"`
	JSON       string     `yaml:"json" doc:"setting that receives all claims as JSON, exactly as the token holds them (e.g. request.jwt.claims); empty disables"`
	Namespaces StringList `yaml:"namespaces" doc:"a listed claim whose value is a JSON object has its members lifted to the top level (Hasura: https://hasura.io/jwt/claims); a listed prefix is stripped from claim names (Platformatic, Auth0: https://platformatic.dev/); applies to the settings and to jwt.role_claim" reload:"yes"`
}

// TLS configures client-facing TLS.
type TLS struct {
	Cert             string `yaml:"cert" doc:"PEM certificate file; with key, enables TLS for clients (re-read on reload; turning TLS on or off needs a restart)" reload:"yes"`
	Key              string `yaml:"key" doc:"PEM private key file" reload:"yes"`
	RequireForRemote bool   `yaml:"require_for_remote" doc:"refuse a token sent in clear text from a non-loopback address"`
}

// Guard configures the statement guard.
type Guard struct {
	AllowDo bool `yaml:"allow_do" doc:"let DO blocks through (PL/pgSQL EXECUTE can build any statement)"`
}

// Checks configures the lock-down checks of the upstream (docs/SECURITY.md).
type Checks struct {
	Skip StringList `yaml:"skip" doc:"lock-down checks not to apply: superuser, bypassrls, role_attributes, temporary, create, predefined_roles, upstream_login, noinherit, login_privileges (docs/SECURITY.md); a role that fails any other is refused at login" reload:"yes"`
}

// Limits bound what one client may make pgtoken hold.
type Limits struct {
	StartupTimeout   Duration `yaml:"startup_timeout" doc:"time allowed from connect to login"`
	MaxStartupPacket int      `yaml:"max_startup_packet" doc:"bytes"`
	MaxPassword      int      `yaml:"max_password" doc:"bytes; the token is the password"`
	MaxMessage       int      `yaml:"max_message" doc:"largest client message buffered whole, bytes"`
	MaxClientConn    int      `yaml:"max_client_conn" doc:"0 = unlimited"`
	// ClientWriteTimeout bounds how long a client may leave pgtoken's
	// output unread.
	ClientWriteTimeout Duration `yaml:"client_write_timeout" doc:"a client that reads none of what pgtoken sends it for this long is disconnected and its server connection dropped, so it cannot hold one by not reading; 0 disables"`
	// Slowing down token guessing (session/backoff.go).
	AuthFailureDelay Duration `yaml:"auth_failure_delay" doc:"a login whose password is no correctly signed token (malformed, bad signature, unknown key, empty) gets its FATAL this late; 0 answers at once"`
	AuthFailureRate  float64  `yaml:"auth_failure_rate" doc:"such failed signature checks per second per client IP address, beyond auth_failure_burst, before that address's uncached tokens wait for their check; 0 disables"`
	AuthFailureBurst int      `yaml:"auth_failure_burst" doc:"failed signature checks one client IP address may have at once before auth_failure_rate applies"`
}

// Default returns the configuration used for every key a file leaves out.
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:6432",
		ServeUpstream:   true,
		LogLevel:        "info",
		LogFormat:       "console",
		ShutdownTimeout: Duration(30 * time.Second),
		Pool: Pool{
			Mode:           "transaction",
			Size:           20,
			WaitTimeout:    Duration(30 * time.Second),
			ConnectTimeout: Duration(10 * time.Second),
			StatementCache: 256,
			// PgBouncer's defaults.
			ReserveTimeout:    Duration(5 * time.Second),
			ServerLifetime:    Duration(time.Hour),
			ServerIdleTimeout: Duration(10 * time.Minute),
			ServerCheckDelay:  Duration(30 * time.Second),
		},
		JWT: JWT{
			Leeway:     Duration(30 * time.Second),
			RequireExp: true,
			RoleClaim:  ".role",
			CacheSize:  10000,
		},
		Claims: Claims{Prefix: "jwt.claims"},
		TLS:    TLS{RequireForRemote: true},
		Limits: Limits{
			StartupTimeout:     Duration(60 * time.Second),
			ClientWriteTimeout: Duration(60 * time.Second),
			MaxStartupPacket:   10000,
			MaxPassword:        64 << 10,
			MaxMessage:         64 << 20,

			AuthFailureDelay: Duration(time.Second),
			AuthFailureRate:  10,
			AuthFailureBurst: 20,
		},
	}
}

// Load reads a YAML file over the defaults, then the environment.
func Load(path string, env []string) (Config, error) {
	cfg := Default()
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		if err := Parse(raw, &cfg); err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := ApplyEnv(&cfg, env); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Parse decodes YAML into cfg, refusing unknown keys. An error names the
// key it is about.
func Parse(raw []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	// An empty file means "all defaults".
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nameKeys(err, raw)
	}
	return nil
}

var (
	lineRe     = regexp.MustCompile(`line (\d+): (.*)`)
	unknownRe  = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	mismatchRe = regexp.MustCompile("^cannot unmarshal !!\\w+ `(.*)` into (\\S+)$")
)

// nameKeys rewrites a YAML decoding error so each of its lines starts with
// the key it is about: "pool.size (line 3): want an integer, got \"many\"".
func nameKeys(err error, raw []byte) error {
	var root yaml.Node
	if yaml.Unmarshal(raw, &root) != nil {
		return err
	}
	var out []string
	for _, line := range strings.Split(strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n"), "\n") {
		line = strings.TrimSpace(line)
		m := lineRe.FindStringSubmatch(line)
		if m == nil {
			out = append(out, line)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		msg := m[2]
		if mm := unknownRe.FindStringSubmatch(msg); mm != nil {
			msg = "unknown key"
		} else if mm := mismatchRe.FindStringSubmatch(msg); mm != nil {
			msg = fmt.Sprintf("want %s, got %q", typeWords(mm[2]), mm[1])
		}
		if key := keyAtLine(&root, n, m[2]); key != "" {
			out = append(out, fmt.Sprintf("%s (line %d): %s", key, n, msg))
		} else {
			out = append(out, fmt.Sprintf("line %d: %s", n, msg))
		}
	}
	return &keyError{msg: strings.Join(out, "\n"), err: err}
}

// keyError is a decoding error rewritten to name its keys.
type keyError struct {
	msg string
	err error
}

func (e *keyError) Error() string { return e.msg }
func (e *keyError) Unwrap() error { return e.err }

func typeWords(goType string) string {
	switch {
	case goType == "int":
		return "an integer"
	case goType == "bool":
		return "true or false"
	case goType == "float64":
		return "a number"
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "map"), strings.HasSuffix(goType, "PeerMap"):
		return "a mapping"
	case strings.HasPrefix(goType, "[]"), strings.HasSuffix(goType, "StringList"):
		return "a list"
	}
	return goType
}

// keyAtLine returns the dotted path of the key on line n; where several
// keys share the line (a flow mapping), the one whose value the message
// mentions, else the deepest.
func keyAtLine(root *yaml.Node, n int, msg string) string {
	best, bestDepth, bestMentioned := "", -1, false
	var walk func(nd *yaml.Node, path string, depth int)
	walk = func(nd *yaml.Node, path string, depth int) {
		switch nd.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for _, c := range nd.Content {
				walk(c, path, depth)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(nd.Content); i += 2 {
				k, v := nd.Content[i], nd.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if k.Line == n {
					mentioned := v.Kind == yaml.ScalarNode && v.Value != "" && strings.Contains(msg, v.Value) ||
						strings.Contains(msg, "field "+k.Value+" ")
					if mentioned && !bestMentioned || mentioned == bestMentioned && depth > bestDepth {
						best, bestDepth, bestMentioned = p, depth, mentioned
					}
				}
				walk(v, p, depth+1)
			}
		}
	}
	walk(root, "", 0)
	return best
}

// Validate checks the configuration; every error names its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "want host:port, got %q", c.Listen)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("metrics_listen", "want host:port, got %q", c.MetricsListen)
		}
	}
	if c.Upstream == "" {
		bad("upstream", "required: the server connection string, e.g. postgres://authenticator:secret@127.0.0.1:5432/app")
	} else if _, err := pgconn.ParseConfig(c.Upstream); err != nil {
		bad("upstream", "%v", redactErr(err))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "want debug, info, warn or error, got %q", c.LogLevel)
	}
	switch c.LogFormat {
	case "console", "json":
	default:
		bad("log_format", "want console or json, got %q", c.LogFormat)
	}
	switch c.Pool.Mode {
	case "transaction", "session":
	default:
		bad("pool.mode", "want transaction or session, got %q", c.Pool.Mode)
	}
	if c.Pool.Size <= 0 {
		bad("pool.size", "must be positive, got %d", c.Pool.Size)
	}
	if c.Pool.StatementCache < 1 {
		bad("pool.statement_cache", "must be at least 1, got %d", c.Pool.StatementCache)
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"pool.min_size", c.Pool.MinSize}, {"pool.reserve_size", c.Pool.ReserveSize}} {
		if n.v < 0 {
			bad(n.key, "must not be negative, got %d", n.v)
		}
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"pool.wait_timeout", c.Pool.WaitTimeout}, {"pool.reserve_timeout", c.Pool.ReserveTimeout}, {"pool.server_lifetime", c.Pool.ServerLifetime},
		{"pool.server_idle_timeout", c.Pool.ServerIdleTimeout}, {"pool.server_check_delay", c.Pool.ServerCheckDelay},
		{"pool.client_idle_timeout", c.Pool.ClientIdleTimeout}, {"pool.query_timeout", c.Pool.QueryTimeout},
	} {
		if d.v < 0 {
			bad(d.key, "must not be negative")
		}
	}
	if c.ShutdownTimeout < 0 {
		bad("shutdown_timeout", "must not be negative")
	}
	if c.PeerID < 0 || c.PeerID > MaxPeerID {
		bad("peer_id", "want 0 to %d, got %d", MaxPeerID, c.PeerID)
	}
	for _, id := range sortedPeerIDs(c.Peers) {
		key := fmt.Sprintf("peers.%d", id)
		if id < 0 || id > MaxPeerID {
			bad(key, "peer ids are 0 to %d", MaxPeerID)
		}
		if _, _, err := net.SplitHostPort(c.Peers[id]); err != nil {
			bad(key, "want host:port, got %q", c.Peers[id])
		}
	}
	for name, d := range c.Databases {
		if d.Upstream == "" {
			bad("databases."+name+".upstream", "required")
		} else if _, err := pgconn.ParseConfig(d.Upstream); err != nil {
			bad("databases."+name+".upstream", "%v", redactErr(err))
		}
		if d.PoolSize < 0 {
			bad("databases."+name+".pool_size", "must not be negative")
		}
	}
	if c.JWT.Secret == "" && len(c.JWT.JWKS) == 0 && len(c.JWT.PublicKeys) == 0 && len(c.JWT.JWKSIssuers) == 0 {
		bad("jwt", "no key configured: set jwt.secret, jwt.jwks, jwt.public_keys or jwt.jwks_issuers")
	}
	if len(c.JWT.AllowedRoles) == 0 {
		bad("jwt.allowed_roles", "required: the roles a token may name")
	}
	if r := c.JWT.AnonRole; r != "" && len(c.JWT.AllowedRoles) > 0 && !slices.Contains(c.JWT.AllowedRoles, r) {
		bad("jwt.anon_role", "%q is not in jwt.allowed_roles (list it there too: a token without a role claim gets it)", r)
	}
	for _, r := range c.AdminRoles {
		if !slices.Contains(c.JWT.AllowedRoles, r) {
			bad("admin_roles", "%q is not in jwt.allowed_roles (an admin's token must pass verification like any other)", r)
		}
	}
	for _, r := range c.JWT.PrivilegedRoles {
		if !slices.Contains(c.JWT.AllowedRoles, r) {
			bad("jwt.privileged_roles", "%q is not in jwt.allowed_roles", r)
		}
	}
	for _, a := range c.JWT.Algorithms {
		if strings.EqualFold(a, "none") {
			bad("jwt.algorithms", "\"none\" is never allowed")
		}
	}
	if c.JWT.Leeway < 0 {
		bad("jwt.leeway", "must not be negative")
	}
	if !validSettingPath(c.Claims.Prefix) {
		bad("claims.prefix", "want a dotted identifier like jwt.claims, got %q", c.Claims.Prefix)
	}
	if c.Claims.JSON != "" && !validSettingPath(c.Claims.JSON) {
		bad("claims.json", "want a dotted identifier like request.jwt.claims, got %q", c.Claims.JSON)
	}
	for i, ns := range c.Claims.Namespaces {
		switch {
		case ns == "":
			bad("claims.namespaces", "entry %d is empty", i+1)
		case slices.Contains(c.Claims.Namespaces[:i], ns):
			bad("claims.namespaces", "%q is listed twice", ns)
		}
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		bad("tls", "set both tls.cert and tls.key, or neither")
	}
	if c.Limits.MaxPassword < 1024 {
		bad("limits.max_password", "must be at least 1024 bytes")
	}
	if c.Limits.MaxMessage < 1<<20 {
		bad("limits.max_message", "must be at least 1 MiB")
	}
	if c.Limits.AuthFailureDelay < 0 {
		bad("limits.auth_failure_delay", "must not be negative (0 answers at once)")
	}
	if c.Limits.AuthFailureRate < 0 {
		bad("limits.auth_failure_rate", "must not be negative (0 disables the limit)")
	}
	if c.Limits.AuthFailureRate > 0 && c.Limits.AuthFailureBurst < 1 {
		bad("limits.auth_failure_burst", "must be at least 1 while limits.auth_failure_rate is set")
	}
	for _, name := range c.Checks.Skip {
		if !lockdown.Valid(name) {
			bad("checks.skip", "unknown check %q; the checks are %s", name, lockdown.CheckNames())
		}
	}
	if !c.ServeUpstream && len(c.Databases) == 0 {
		bad("serve_upstream_database", "false, and databases is empty: pgtoken would serve no database")
	}
	return errors.Join(errs...)
}

// validSettingPath reports whether s is a custom setting name Postgres
// accepts: dot-separated ASCII identifiers, at least two.
func validSettingPath(s string) bool {
	return strings.Contains(s, ".") && authn.ValidSettingName(s)
}

// redactErr keeps a DSN parse error from echoing the DSN (which may hold a
// password).
func redactErr(err error) error {
	msg := err.Error()
	if _, ok := errors.AsType[*pgconn.ParseConfigError](err); ok {
		// "cannot parse `<DSN, best-effort redacted>`: why": keep the why.
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			msg = "cannot parse the connection string: " + msg[i+3:]
		}
	}
	if i := strings.Index(msg, "("); i > 0 && strings.Contains(msg, "://") {
		msg = msg[:i]
	}
	return errors.New(strings.TrimSpace(msg))
}

// MaxPeerID is the largest peer_id (three bits of the cancel key).
const MaxPeerID = 7

// PeerMap maps peer ids to host:port.
type PeerMap map[int]string

func sortedPeerIDs(m PeerMap) []int {
	ids := make([]int, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// String renders the map as the environment form: 0=host:port,1=host:port.
func (m PeerMap) String() string {
	var parts []string
	for _, id := range sortedPeerIDs(m) {
		parts = append(parts, fmt.Sprintf("%d=%s", id, m[id]))
	}
	return strings.Join(parts, ",")
}

// Duration is a time.Duration written as "30s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: want a duration like 30s, got %q", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// StringList accepts a single string or a list.
type StringList []string

// UnmarshalYAML accepts "x" or [x, y].
func (l *StringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var s string
		if err := n.Decode(&s); err != nil {
			return err
		}
		if s == "" {
			*l = nil
		} else {
			*l = StringList{s}
		}
		return nil
	}
	var xs []string
	if err := n.Decode(&xs); err != nil {
		return err
	}
	*l = xs
	return nil
}
