package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = `
upstream: postgres://authenticator:s3cret@127.0.0.1:5432/app?sslmode=disable
jwt:
  secret: "0123456789abcdef0123456789abcdef"
  jwks: file:///etc/pgtoken/jwks.json
  allowed_roles: [web_user, web_anon]
`

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pgtoken.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadAppliesDefaultsAndTheIssueExample(t *testing.T) {
	cfg, err := Load(write(t, minimal+`
pool: {mode: session, size: 7, wait_timeout: 5s}
claims: {prefix: jwt.claims, json: request.jwt.claims}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:6432" || cfg.Pool.Mode != "session" || cfg.Pool.Size != 7 ||
		cfg.Pool.WaitTimeout.D() != 5*time.Second || cfg.JWT.Leeway.D() != 30*time.Second ||
		cfg.JWT.RoleClaim != ".role" || cfg.Claims.JSON != "request.jwt.claims" || !cfg.JWT.RequireExp {
		t.Fatalf("unexpected config: %+v", cfg)
	}
	if len(cfg.JWT.JWKS) != 1 || cfg.JWT.JWKS[0] != "file:///etc/pgtoken/jwks.json" {
		t.Fatalf("jwks as a single string: %q", cfg.JWT.JWKS)
	}
}

func TestPrecedenceFlagsOverEnvOverFile(t *testing.T) {
	path := write(t, minimal+"pool: {size: 3}\nlog_level: warn\n")
	env := []string{"PGTOKEN_POOL_SIZE=5", "PGTOKEN_LOG_LEVEL=debug", "PGTOKEN_JWT_ALLOWED_ROLES=a, b", "UNRELATED=1"}
	cfg, err := Load(path, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Pool.Size != 5 || cfg.LogLevel != "debug" || strings.Join(cfg.JWT.AllowedRoles, "|") != "a|b" {
		t.Fatalf("env did not override the file: %+v", cfg)
	}
	// A flag (config.Set) beats both.
	if err := Set(&cfg, "pool.size", "9"); err != nil {
		t.Fatal(err)
	}
	if cfg.Pool.Size != 9 {
		t.Fatalf("flag did not override env: %d", cfg.Pool.Size)
	}
	// Without env, the file wins over the default.
	cfg, _ = Load(path, nil)
	if cfg.Pool.Size != 3 || cfg.LogLevel != "warn" {
		t.Fatalf("file did not override defaults: %+v", cfg)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ body, env, want string }{
		{minimal + "pool: {mode: bogus}\n", "", "pool.mode"},
		{minimal + "pool: {size: 0}\n", "", "pool.size"},
		{minimal + "pool: {wait_timeout: soon}\n", "", "want a duration"},
		{minimal + "claims: {prefix: 'not a path'}\n", "", "claims.prefix"},
		{minimal + "tls: {cert: a.pem}\n", "", "tls"},
		{minimal, "PGTOKEN_JWT_ALGORITHMS=none", "jwt.algorithms"},
		{minimal + "nosuchkey: 1\n", "", "nosuchkey"},
		{"upstream: ''\n", "", "upstream"},
		{minimal, "PGTOKEN_POOL_SIZE=many", "pool.size"},
	} {
		var env []string
		if tc.env != "" {
			env = []string{tc.env}
		}
		cfg, err := Load(write(t, tc.body), env)
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %q: error %v, want one naming %q", tc.body, tc.env, err, tc.want)
		}
	}
}

func TestRedactedHidesSecrets(t *testing.T) {
	cfg, err := Load(write(t, minimal+"databases: {other: {upstream: 'host=x password=hunter2 dbname=o'}}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Redacted()
	if strings.Contains(r.Upstream, "s3cret") || r.JWT.Secret != "REDACTED" || strings.Contains(r.Databases["other"].Upstream, "hunter2") {
		t.Fatalf("secrets leak: %+v", r)
	}
	if cfg.JWT.Secret == "REDACTED" {
		t.Fatal("Redacted changed the original")
	}
}

func TestDocsAreGeneratedFromDefaults(t *testing.T) {
	d := Docs()
	for _, want := range []string{"`pool.size` | `20` | `PGTOKEN_POOL_SIZE`", "`jwt.leeway` | `30s`", "`claims.prefix` | `jwt.claims`"} {
		if !strings.Contains(d, want) {
			t.Errorf("docs lack %q", want)
		}
	}
	committed, err := os.ReadFile(filepath.Join("..", "..", "docs", "CONFIG.md"))
	if err != nil {
		t.Fatalf("docs/CONFIG.md: %v (run make docs)", err)
	}
	if !strings.Contains(string(committed), d) {
		t.Fatal("docs/CONFIG.md is out of date with the code's defaults: run make docs")
	}
}

func TestNewKeysValidate(t *testing.T) {
	for _, tc := range []struct{ body, env, want string }{
		{minimal + "peer_id: 8\n", "", "peer_id: want 0 to 7"},
		{minimal + "peers: {9: 'h:1'}\n", "", "peers.9"},
		{minimal + "peers: {1: 'nohostport'}\n", "", "peers.1: want host:port"},
		{minimal + "admin_roles: [ops]\n", "", `admin_roles: "ops" is not in jwt.allowed_roles`},
		{"upstream: postgres://a@b/c\njwt: {secret: s, allowed_roles: [web_user], anon_role: web_anon}\n", "", `jwt.anon_role: "web_anon" is not in jwt.allowed_roles`},
		{minimal + "shutdown_timeout: -1s\n", "", "shutdown_timeout"},
		{minimal, "PGTOKEN_PEERS=1-h:1", "peers (from PGTOKEN_PEERS)"},
		{minimal, "PGTOKEN_DATABASES_X_POOL_SIZE=big", "databases.x.pool_size"},
		{minimal, "PGTOKEN_DATABASES_X_COLOR=red", "PGTOKEN_DATABASES_X_COLOR"},
		{minimal, "PGTOKEN_DATABASES_X_POOL_SIZE=3", "databases.x.upstream: required"},
		{minimal + "pool: {size: many}\n", "", `pool.size (line 7): want an integer, got "many"`},
		{minimal + "limits: {nosuch: 1}\n", "", "limits.nosuch (line 7): unknown key"},
		{minimal + "reuse_port: maybe\n", "", `reuse_port (line 7): want true or false, got "maybe"`},
		{minimal + "claims: {namespaces: [a/, a/]}\n", "", `claims.namespaces: "a/" is listed twice`},
		{minimal, "PGTOKEN_CLAIMS_NAMESPACES=x,,", ""}, // empty entries of a list are dropped: valid
		{"upstream: postgres://a@b/c\njwt: {allowed_roles: [r]}\n", "", "jwt.jwks_issuers"},
	} {
		if tc.want == "" {
			cfg, err := Load(write(t, tc.body), []string{tc.env})
			if err == nil {
				err = cfg.Validate()
			}
			if err != nil {
				t.Errorf("%q %q: %v", tc.body, tc.env, err)
			}
			continue
		}
		var env []string
		if tc.env != "" {
			env = []string{tc.env}
		}
		cfg, err := Load(write(t, tc.body), env)
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %q: error %v, want one with %q", tc.body, tc.env, err, tc.want)
		}
	}
}

func TestEnvSetsPeersAndDatabases(t *testing.T) {
	cfg, err := Load(write(t, minimal+"databases: {reports: {upstream: 'host=r dbname=rep', pool_size: 2}}\n"), []string{
		"PGTOKEN_PEERS=0=a:6432, 1=b:6432",
		"PGTOKEN_PEER_ID=1",
		"PGTOKEN_ADMIN_ROLES=web_user",
		"PGTOKEN_DATABASES_REPORTS_POOL_SIZE=7",
		"PGTOKEN_DATABASES_BILLING_UPSTREAM=postgres://u:pw@h/billing",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Peers[0] != "a:6432" || cfg.Peers[1] != "b:6432" || cfg.PeerID != 1 || cfg.AdminRoles[0] != "web_user" {
		t.Fatalf("peers/admin from env: %+v %d %v", cfg.Peers, cfg.PeerID, cfg.AdminRoles)
	}
	if d := cfg.Databases["reports"]; d.PoolSize != 7 || d.Upstream != "host=r dbname=rep" {
		t.Fatalf("reports: %+v", d)
	}
	if d := cfg.Databases["billing"]; d.Upstream != "postgres://u:pw@h/billing" {
		t.Fatalf("billing: %+v", d)
	}
}

// claims.namespaces and jwt.jwks_issuers come from YAML lists or
// comma-separated variables, and an issuer list alone is a key source.
func TestNamespacesAndIssuers(t *testing.T) {
	cfg, err := Load(write(t, `
upstream: postgres://authenticator@127.0.0.1/app
jwt: {jwks_issuers: ["https://tenant.auth0.com/"], allowed_roles: [web_user]}
claims: {namespaces: ["https://hasura.io/jwt/claims", "https://platformatic.dev/"]}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Claims.Namespaces) != 2 || cfg.Claims.Namespaces[1] != "https://platformatic.dev/" || cfg.JWT.JWKSIssuers[0] != "https://tenant.auth0.com/" {
		t.Fatalf("from YAML: %q %q", cfg.Claims.Namespaces, cfg.JWT.JWKSIssuers)
	}
	cfg, err = Load(write(t, minimal), []string{"PGTOKEN_CLAIMS_NAMESPACES=https://a.example/, https://b.example/", "PGTOKEN_JWT_JWKS_ISSUERS=https://idp.example"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Claims.Namespaces, "|") != "https://a.example/|https://b.example/" || strings.Join(cfg.JWT.JWKSIssuers, "|") != "https://idp.example" {
		t.Fatalf("from the environment: %q %q", cfg.Claims.Namespaces, cfg.JWT.JWKSIssuers)
	}
	if !Reloadable("claims.namespaces") || !Reloadable("jwt.jwks_issuers") {
		t.Fatal("claims.namespaces and jwt.jwks_issuers only change the verifier, which a reload replaces")
	}
}

func TestRedactedHidesJWKSCredentials(t *testing.T) {
	cfg := Default()
	cfg.JWT.JWKS = StringList{"https://user:tok3n@idp/jwks.json", "file:///k.json"}
	cfg.JWT.JWKSIssuers = StringList{"https://user:tok3n@idp"}
	r := cfg.Redacted()
	if strings.Contains(r.JWT.JWKSIssuers[0], "tok3n") || cfg.JWT.JWKSIssuers[0] != "https://user:tok3n@idp" {
		t.Fatalf("issuers: %v (original %v)", r.JWT.JWKSIssuers, cfg.JWT.JWKSIssuers)
	}
	if strings.Contains(r.JWT.JWKS[0], "tok3n") || r.JWT.JWKS[1] != "file:///k.json" || cfg.JWT.JWKS[0] != "https://user:tok3n@idp/jwks.json" {
		t.Fatalf("JWKS URLs: %v (original %v)", r.JWT.JWKS, cfg.JWT.JWKS)
	}
}

func TestReloadSplitsWhatAppliesFromWhatNeedsARestart(t *testing.T) {
	cur, err := Load(write(t, minimal+"databases: {rep: {upstream: 'host=r', pool_size: 2}}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	next := cur
	next.JWT.AllowedRoles = StringList{"web_user"}
	next.Pool.Size = 3
	next.Pool.Mode = "session"
	next.Listen = "0.0.0.0:1"
	next.LogLevel = "debug"
	next.Databases = map[string]Database{"rep": {Upstream: "host=other", PoolSize: 5}, "new": {Upstream: "host=n"}}
	eff, applied, restart := Reload(cur, next)
	if strings.Join(eff.JWT.AllowedRoles, ",") != "web_user" || eff.Pool.Size != 3 || eff.LogLevel != "debug" ||
		eff.Pool.Mode != "transaction" || eff.Listen != cur.Listen ||
		eff.Databases["rep"].PoolSize != 5 || eff.Databases["rep"].Upstream != "host=r" || len(eff.Databases) != 1 {
		t.Fatalf("effective: %+v", eff)
	}
	if got := strings.Join(applied, " "); got != "log_level pool.size jwt.allowed_roles databases.rep.pool_size" {
		t.Errorf("applied: %s", got)
	}
	if got := strings.Join(restart, " "); got != "listen pool.mode databases.new databases.rep.upstream" {
		t.Errorf("restart: %s", got)
	}
	if cur.Databases["rep"].PoolSize != 2 {
		t.Fatal("Reload changed its input")
	}
	for _, k := range []string{"jwt.allowed_roles", "pool.size", "databases.x.pool_size", "tls.cert"} {
		if !Reloadable(k) {
			t.Errorf("%s should be reloadable", k)
		}
	}
	if Reloadable("upstream") || Reloadable("pool.mode") {
		t.Error("upstream and pool.mode need a restart")
	}
}

func TestPoolLifecycleKeys(t *testing.T) {
	d := Default().Pool
	// PgBouncer's defaults.
	if d.MinSize != 0 || d.ReserveSize != 0 || d.ReserveTimeout.D() != 5*time.Second ||
		d.ServerLifetime.D() != time.Hour || d.ServerIdleTimeout.D() != 10*time.Minute ||
		d.ServerCheckDelay.D() != 30*time.Second || d.ClientIdleTimeout != 0 || d.QueryTimeout != 0 {
		t.Fatalf("defaults: %+v", d)
	}
	cfg, err := Load(write(t, minimal+`
pool: {min_size: 2, reserve_size: 3, reserve_timeout: 1s, server_lifetime: 0s, server_idle_timeout: 0s,
       server_check_delay: 0s, client_idle_timeout: 1h, query_timeout: 5m}
`), []string{"PGTOKEN_POOL_MIN_SIZE=4"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p := cfg.Pool
	if p.MinSize != 4 || p.ReserveSize != 3 || p.ReserveTimeout.D() != time.Second || p.ServerLifetime != 0 ||
		p.ServerIdleTimeout != 0 || p.ServerCheckDelay != 0 || p.ClientIdleTimeout.D() != time.Hour || p.QueryTimeout.D() != 5*time.Minute {
		t.Fatalf("loaded: %+v", p)
	}
	for _, key := range []string{"min_size: -1", "reserve_size: -1", "reserve_timeout: -1s", "server_lifetime: -1s",
		"server_idle_timeout: -1s", "server_check_delay: -1s", "client_idle_timeout: -1s", "query_timeout: -1s", "wait_timeout: -1s"} {
		cfg, err := Load(write(t, minimal+"pool: {"+key+"}\n"), nil)
		if err == nil {
			err = cfg.Validate()
		}
		name, _, _ := strings.Cut(key, ":")
		if err == nil || !strings.Contains(err.Error(), "pool."+name+": must not be negative") {
			t.Errorf("%s: %v", key, err)
		}
	}
	for _, key := range []string{"min_size", "reserve_size", "reserve_timeout", "server_lifetime", "server_idle_timeout",
		"server_check_delay", "client_idle_timeout", "query_timeout"} {
		if !Reloadable("pool." + key) {
			t.Errorf("pool.%s is reloadable in PgBouncer, and should be here", key)
		}
	}
}
