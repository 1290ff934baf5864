package config

import (
	"fmt"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// EnvPrefix starts every environment variable pgtoken reads.
const EnvPrefix = "PGTOKEN_"

// field is one leaf setting: its YAML path, environment name and value.
type field struct {
	path   string // pool.size
	env    string // PGTOKEN_POOL_SIZE
	doc    string
	secret string
	v      reflect.Value
}

// fields lists the leaf settings of cfg in declaration order (the
// databases map is left out: it is set in the file only).
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
			case fv.Kind() == reflect.Map:
				continue
			case fv.Kind() == reflect.Struct:
				walk(fv, path)
			default:
				out = append(out, field{
					path:   path,
					env:    EnvPrefix + strings.ToUpper(strings.ReplaceAll(path, ".", "_")),
					doc:    sf.Tag.Get("doc"),
					secret: sf.Tag.Get("secret"),
					v:      fv,
				})
			}
		}
	}
	walk(reflect.ValueOf(cfg).Elem(), "")
	return out
}

// ApplyEnv overlays PGTOKEN_<SECTION>_<KEY> variables from env (in
// os.Environ form). Lists are comma-separated.
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
	out.JWT.JWKS = append(StringList(nil), c.JWT.JWKS...)
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

// RedactDSN removes the password from a URL or key=value connection string.
func RedactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" && strings.Contains(dsn, "://") {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "REDACTED")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	parts := strings.Fields(dsn)
	for i, p := range parts {
		if strings.HasPrefix(strings.ToLower(p), "password=") {
			parts[i] = "password=REDACTED"
		}
	}
	return strings.Join(parts, " ")
}

// Docs renders the settings table (key, default, environment variable,
// meaning) from the code, so the documented defaults cannot drift.
func Docs() string {
	d := Default()
	var b strings.Builder
	b.WriteString("| key | default | environment | meaning |\n|---|---|---|---|\n")
	for _, f := range fields(&d) {
		def := fmt.Sprint(f.v.Interface())
		switch x := f.v.Interface().(type) {
		case Duration:
			def = time.Duration(x).String()
		case StringList:
			def = strings.Join(x, ", ")
		}
		if def == "" {
			def = "—"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | `%s` | %s |\n", f.path, def, f.env, f.doc)
	}
	b.WriteString("| `databases.<name>.upstream`, `databases.<name>.pool_size` | — | — (file only) | a client database name mapped to its own upstream and pool size |\n")
	return b.String()
}
