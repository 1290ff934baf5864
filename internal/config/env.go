package config

import (
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// EnvPrefix starts every environment variable pgtoken reads.
const EnvPrefix = "PGTOKEN_"

// FileEnv names the configuration file when --config is not given.
const FileEnv = EnvPrefix + "CONFIG"

// envName is the environment variable of the setting at path.
func envName(path string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// field is one leaf setting: its YAML path, environment name and value.
type field struct {
	path   string // pool.size
	env    string // PGTOKEN_POOL_SIZE
	doc    string
	secret string
	reload bool
	v      reflect.Value
}

// fields lists the leaf settings of cfg in declaration order (the
// databases map is left out: see applyDatabaseEnv).
func fields(cfg *Config) []field {
	var out []field
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			name := strings.Split(sf.Tag.Get("yaml"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			fv := v.Field(i)
			path := name
			if prefix != "" {
				path = prefix + "." + name
			}
			switch {
			case fv.Kind() == reflect.Map && fv.Type() != reflect.TypeFor[PeerMap]():
				continue
			case fv.Kind() == reflect.Struct:
				walk(fv, path)
			default:
				out = append(out, field{
					path:   path,
					env:    envName(path),
					doc:    sf.Tag.Get("doc"),
					secret: sf.Tag.Get("secret"),
					reload: sf.Tag.Get("reload") == "yes",
					v:      fv,
				})
			}
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), "")
	return out
}

// ApplyEnv overlays PGTOKEN_<SECTION>_<KEY> variables from env (in
// os.Environ form). Lists are comma-separated; peers are written
// 0=host:port,1=host:port; a mapped database is set with
// PGTOKEN_DATABASES_<NAME>_UPSTREAM and PGTOKEN_DATABASES_<NAME>_POOL_SIZE
// (NAME in lower case is the database name).
func ApplyEnv(cfg *Config, env []string) error {
	vals := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			vals[k] = v
		}
	}
	for _, f := range fields(cfg) {
		v, ok := vals[f.env]
		if !ok {
			continue
		}
		if err := setValue(f.v, v); err != nil {
			return fmt.Errorf("%s (from %s): %w", f.path, f.env, err)
		}
	}
	return applyDatabaseEnv(cfg, vals)
}

// applyDatabaseEnv reads PGTOKEN_DATABASES_<NAME>_UPSTREAM and _POOL_SIZE.
func applyDatabaseEnv(cfg *Config, vals map[string]string) error {
	const prefix = EnvPrefix + "DATABASES_"
	names := make([]string, 0, len(vals))
	for k := range vals {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		var name, key string
		switch {
		case strings.HasSuffix(rest, "_UPSTREAM"):
			name, key = strings.TrimSuffix(rest, "_UPSTREAM"), "upstream"
		case strings.HasSuffix(rest, "_POOL_SIZE"):
			name, key = strings.TrimSuffix(rest, "_POOL_SIZE"), "pool_size"
		default:
			return fmt.Errorf("%s: want %s<NAME>_UPSTREAM or %s<NAME>_POOL_SIZE", k, prefix, prefix)
		}
		if name == "" {
			return fmt.Errorf("%s: the database name is missing", k)
		}
		name = strings.ToLower(name)
		path := "databases." + name + "." + key
		if cfg.Databases == nil {
			cfg.Databases = map[string]Database{}
		} else if _, copied := cfg.Databases[name]; !copied {
			cfg.Databases = maps.Clone(cfg.Databases)
		}
		d := cfg.Databases[name]
		if key == "upstream" {
			d.Upstream = vals[k]
		} else {
			n, err := strconv.Atoi(vals[k])
			if err != nil {
				return fmt.Errorf("%s (from %s): want an integer, got %q", path, k, vals[k])
			}
			d.PoolSize = n
		}
		cfg.Databases[name] = d
	}
	return nil
}

// Set sets one setting by its YAML path (for flags).
func Set(cfg *Config, path, value string) error {
	for _, f := range fields(cfg) {
		if f.path == path {
			if err := setValue(f.v, value); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			return nil
		}
	}
	return fmt.Errorf("unknown setting %q", path)
}

func setValue(v reflect.Value, s string) error {
	switch v.Interface().(type) {
	case Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("want a duration like 30s, got %q", s)
		}
		v.Set(reflect.ValueOf(Duration(d)))
		return nil
	case StringList:
		var l StringList
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				l = append(l, p)
			}
		}
		v.Set(reflect.ValueOf(l))
		return nil
	case PeerMap:
		m := PeerMap{}
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			id, addr, ok := strings.Cut(p, "=")
			n, err := strconv.Atoi(strings.TrimSpace(id))
			if !ok || err != nil {
				return fmt.Errorf("want id=host:port,id=host:port, got %q", s)
			}
			m[n] = strings.TrimSpace(addr)
		}
		v.Set(reflect.ValueOf(m))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("want an integer, got %q", s)
		}
		v.SetInt(int64(n))
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("want a number, got %q", s)
		}
		v.SetFloat(f)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("want true or false, got %q", s)
		}
		v.SetBool(b)
	default:
		return fmt.Errorf("cannot be set from text")
	}
	return nil
}

// Redacted returns a copy safe to print: secrets replaced by REDACTED and
// passwords removed from connection strings.
func (c Config) Redacted() Config {
	out := c
	for _, l := range []*StringList{&out.JWT.JWKS, &out.JWT.JWKSIssuers} {
		*l = append(StringList(nil), *l...)
		for i, u := range *l {
			(*l)[i] = RedactDSN(u) // a URL may carry credentials
		}
	}
	for _, f := range fields(&out) {
		if f.v.Kind() != reflect.String || f.v.String() == "" {
			continue
		}
		switch f.secret {
		case "all":
			f.v.SetString("REDACTED")
		case "password":
			f.v.SetString(RedactDSN(f.v.String()))
		}
	}
	if c.Databases != nil {
		out.Databases = map[string]Database{}
		for k, d := range c.Databases {
			d.Upstream = RedactDSN(d.Upstream)
			out.Databases[k] = d
		}
	}
	return out
}

// RedactDSN removes the passwords (password, sslpassword) from a URL or
// key=value connection string. A key=value string it cannot read whole is
// replaced entirely rather than risk showing part of a password.
func RedactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" && strings.Contains(dsn, "://") {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
		q := u.Query()
		redacted := false
		for _, k := range []string{"password", "sslpassword"} {
			if q.Has(k) {
				q.Set(k, "REDACTED")
				redacted = true
			}
		}
		if redacted {
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	kvs, ok := splitKeywordValues(dsn)
	if !ok {
		return "(connection string not shown)"
	}
	parts := make([]string, len(kvs))
	for i, kv := range kvs {
		v := kv[1]
		switch kv[0] {
		case "password", "sslpassword":
			v = "REDACTED"
		}
		if v == "" || strings.ContainsAny(v, " \t\n\r\v\f'\\") {
			v = "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(v) + "'"
		}
		parts[i] = kv[0] + "=" + v
	}
	return strings.Join(parts, " ")
}

// splitKeywordValues reads a key=value connection string as pgconn does
// (spaces around "=", single-quoted values, backslash escapes).
func splitKeywordValues(s string) ([][2]string, bool) {
	const space = " \t\n\r\v\f"
	var out [][2]string
	s = strings.TrimLeft(s, space)
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, false
		}
		key := strings.Trim(s[:eq], space)
		if key == "" || strings.ContainsAny(key, space) {
			return nil, false
		}
		s = strings.TrimLeft(s[eq+1:], space)
		var val strings.Builder
		quoted := s != "" && s[0] == '\''
		if quoted {
			s = s[1:]
		}
		i := 0
		for ; i < len(s); i++ {
			c := s[i]
			if c == '\\' && i+1 < len(s) {
				i++
				val.WriteByte(s[i])
				continue
			}
			if quoted && c == '\'' || !quoted && strings.IndexByte(space, c) >= 0 {
				break
			}
			val.WriteByte(c)
		}
		if quoted {
			if i >= len(s) {
				return nil, false // unterminated quote
			}
			i++
		}
		out = append(out, [2]string{key, val.String()})
		s = strings.TrimLeft(s[i:], space)
	}
	return out, true
}

// Docs renders the settings table (key, default, environment variable,
// whether a reload applies it, meaning) from the code, so the documented
// defaults cannot drift.
func Docs() string {
	d := Default()
	var b strings.Builder
	b.WriteString("| key | default | environment | reload | meaning |\n|---|---|---|---|---|\n")
	for _, f := range fields(&d) {
		def := valueText(f.v)
		if def == "" {
			def = "—"
		}
		reload := "—"
		if f.reload {
			reload = "yes"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | `%s` | %s | %s |\n", f.path, def, f.env, reload, f.doc)
	}
	b.WriteString("| `databases.<name>.upstream` | — | `PGTOKEN_DATABASES_<NAME>_UPSTREAM` | — | a client database name mapped to its own upstream (NAME in the environment is the name in upper case); only these names, and the upstream's own database (serve_upstream_database), are served: any other is refused at login with 3D000 |\n")
	b.WriteString("| `databases.<name>.pool_size` | `0` (= `pool.size`) | `PGTOKEN_DATABASES_<NAME>_POOL_SIZE` | yes | that database's pool size |\n")
	return b.String()
}

// valueText renders a setting's value as the environment would spell it.
func valueText(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case Duration:
		return time.Duration(x).String()
	case StringList:
		return strings.Join(x, ", ")
	case PeerMap:
		return x.String()
	}
	return fmt.Sprint(v.Interface())
}

// Setting is one effective setting, for the admin console's SHOW CONFIG.
type Setting struct {
	Key, Value, Default string
	Reload              bool // applied by a reload without a restart
}

// Settings lists c's settings, secrets redacted, with their defaults.
func Settings(c Config) []Setting {
	r := c.Redacted()
	d := Default()
	cur, def := fields(&r), fields(&d)
	out := make([]Setting, 0, len(cur)+2*len(c.Databases))
	for i, f := range cur {
		out = append(out, Setting{Key: f.path, Value: valueText(f.v), Default: valueText(def[i].v), Reload: f.reload})
	}
	names := make([]string, 0, len(r.Databases))
	for name := range r.Databases {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		db := r.Databases[name]
		out = append(out,
			Setting{Key: "databases." + name + ".upstream", Value: db.Upstream},
			Setting{Key: "databases." + name + ".pool_size", Value: strconv.Itoa(db.PoolSize), Default: "0", Reload: true})
	}
	return out
}

// Reloadable reports whether a reload applies the setting at path.
func Reloadable(path string) bool {
	var c Config
	for _, f := range fields(&c) {
		if f.path == path {
			return f.reload
		}
	}
	return strings.HasPrefix(path, "databases.") && strings.HasSuffix(path, ".pool_size")
}

// Flag is a setting also available as a command-line flag: its flag name,
// the name of its value in help texts, YAML path, environment variable,
// meaning and default (as text).
type Flag struct{ Name, Arg, Path, Env, Doc, Default string }

// Flags lists the common settings that serve and check take as flags.
func Flags() []Flag {
	list := []Flag{
		{Name: "listen", Arg: "ADDR", Path: "listen"},
		{Name: "upstream", Arg: "DSN", Path: "upstream"},
		{Name: "log-level", Arg: "LEVEL", Path: "log_level"},
		{Name: "log-format", Arg: "FORMAT", Path: "log_format"},
		{Name: "pool-mode", Arg: "MODE", Path: "pool.mode"},
		{Name: "pool-size", Arg: "N", Path: "pool.size"},
		{Name: "metrics", Arg: "ADDR", Path: "metrics_listen"},
		{Name: "shutdown-timeout", Arg: "DURATION", Path: "shutdown_timeout"},
		{Name: "peer-id", Arg: "N", Path: "peer_id"},
		{Name: "reuse-port", Arg: "BOOL", Path: "reuse_port"},
	}
	d := Default()
	byPath := map[string]field{}
	for _, f := range fields(&d) {
		byPath[f.path] = f
	}
	for i, fl := range list {
		f := byPath[fl.Path]
		list[i].Env, list[i].Doc, list[i].Default = f.env, f.doc, valueText(f.v)
	}
	return list
}

// Reload returns cur with the settings a reload applies taken from next,
// the keys so changed, and the keys of other settings that differ (they
// keep their value until a restart).
func Reload(cur, next Config) (eff Config, applied, restart []string) {
	eff = cur
	ef, cf, nf := fields(&eff), fields(&cur), fields(&next)
	for i := range ef {
		if reflect.DeepEqual(cf[i].v.Interface(), nf[i].v.Interface()) {
			continue
		}
		if ef[i].reload {
			ef[i].v.Set(nf[i].v)
			applied = append(applied, ef[i].path)
		} else {
			restart = append(restart, ef[i].path)
		}
	}
	if cur.Databases != nil || next.Databases != nil {
		eff.Databases = map[string]Database{}
	}
	for name, d := range cur.Databases {
		eff.Databases[name] = d
	}
	for _, name := range sortedNames(next.Databases) {
		nd := next.Databases[name]
		cd, ok := cur.Databases[name]
		switch {
		case !ok:
			restart = append(restart, "databases."+name)
			continue
		case nd.Upstream != cd.Upstream:
			restart = append(restart, "databases."+name+".upstream")
		}
		if nd.PoolSize != cd.PoolSize {
			cd.PoolSize = nd.PoolSize
			applied = append(applied, "databases."+name+".pool_size")
		}
		eff.Databases[name] = cd
	}
	for _, name := range sortedNames(cur.Databases) {
		if _, ok := next.Databases[name]; !ok {
			restart = append(restart, "databases."+name)
		}
	}
	return eff, applied, restart
}

func sortedNames(m map[string]Database) []string {
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
