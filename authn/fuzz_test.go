package authn

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// FuzzRolePath checks that parsing and looking up never panic, and that
// String yields a path that parses back to the same path.
func FuzzRolePath(f *testing.F) {
	f.Add(".role", `{"role":"web_user"}`)
	f.Add(".realm_access.roles[0]", `{"realm_access":{"roles":["a","b"]}}`)
	f.Add(`."https://hasura.io/jwt/claims"."x-hasura-default-role"`, `{"https://hasura.io/jwt/claims":{"x-hasura-default-role":"r"}}`)
	f.Add(`."a\"b\\c"[3]`, `{"a\"b\\c":[1,2,3,"x"]}`)
	f.Add(".a[99999999999999999999]", `{"a":[]}`)
	f.Fuzz(func(t *testing.T, path, claimsJSON string) {
		p, err := ParseRolePath(path)
		if err != nil {
			return
		}
		again, err := ParseRolePath(p.String())
		if err != nil {
			t.Fatalf("String() %q of %q does not parse: %v", p.String(), path, err)
		}
		if !reflect.DeepEqual(again, p) || again.String() != p.String() {
			t.Fatalf("round trip of %q: %q != %q", path, again.String(), p.String())
		}
		var claims map[string]any
		d := json.NewDecoder(strings.NewReader(claimsJSON))
		d.UseNumber()
		if d.Decode(&claims) == nil {
			p.Lookup(claims)
		}
	})
}

// FuzzVerify feeds arbitrary strings to Verify: no panic, every rejection
// is an *Error, and no message repeats the token.
func FuzzVerify(f *testing.F) {
	v := newV(f, Config{
		Secret:       testSecret,
		RoleClaim:    ".app.roles[0]",
		AnonRole:     "anon",
		ClaimsPrefix: "jwt.claims",
		ClaimsJSON:   "request.jwt.claims",
		CacheSize:    64,
	})
	now := time.Now()
	f.Add(sign(f, jwt.SigningMethodHS256, []byte(testSecret), nil, map[string]any{"app": map[string]any{"roles": []string{"web_user"}}, "exp": now.Add(time.Hour).Unix()}))
	f.Add(hs256(f, `{"x":"a\u0000"}`))
	f.Add(hs256(f, `{"a":1,"a":2}`))
	f.Add(b64(`{"alg":"none"}`) + "." + b64(`{}`) + ".")
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		id, err := v.Verify(token)
		if err == nil {
			if id == nil || id.Role == "" {
				t.Fatalf("accepted with identity %+v", id)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("error %T is not *Error", err)
		}
		if len(token) >= 24 && strings.Contains(e.Error(), token) {
			t.Fatalf("error message repeats the token")
		}
	})
}

// FuzzVerifyPayload signs arbitrary payloads with the secret, so the claims
// handling is reached, and checks what an accepted token yields.
func FuzzVerifyPayload(f *testing.F) {
	v := newV(f, Config{
		Secret:       testSecret,
		AnonRole:     "anon",
		ClaimsPrefix: "jwt.claims",
		ClaimsJSON:   "request.jwt.claims",
		CacheSize:    -1,

		ClaimsNamespaces: []string{"https://hasura.io/jwt/claims", "ns/"},
	})
	f.Add(`{"role":"web_user","sub":1e3,"o":{"b":[1,"\u00e9"],"a":null}}`)
	f.Add(`{"https://hasura.io/jwt/claims":{"x-a":1,"X_A":2},"ns/x-a":3,"x-a":4}`)
	f.Add(`{"https://hasura.io/jwt/claims":"{\"2fa\":1,\"b\":[]}","é":1}`)
	f.Add(`{"role":"web_user","x":"\\u0000","y":"a\"b"}`)
	f.Add(`{"x":"a\u0000"}`)
	f.Add(`{"a":1,"a":2}`)
	f.Add(`{"exp":"soon"}`)
	f.Fuzz(func(t *testing.T, payload string) {
		id, err := v.Verify(hs256(t, payload))
		if err != nil {
			if _, ok := errors.AsType[*Error](err); !ok {
				t.Fatalf("error %T is not *Error", err)
			}
			return
		}
		if id.Role != "web_user" && id.Role != "anon" && id.Role != "reporting" {
			t.Fatalf("role %q accepted", id.Role)
		}
		n := len(id.Settings)
		if n == 0 || id.Settings[n-1].Name != "request.jwt.claims" || !json.Valid([]byte(id.Settings[n-1].Value)) {
			t.Fatalf("JSON setting missing or invalid: %q", id.Settings)
		}
		for i, s := range id.Settings {
			if strings.ContainsRune(s.Name, 0) || strings.ContainsRune(s.Value, 0) {
				t.Fatalf("NUL in setting %q", s)
			}
			if i > 0 && i < n-1 && strings.ToLower(id.Settings[i-1].Name) >= strings.ToLower(s.Name) {
				t.Fatalf("settings not sorted and unique ignoring case: %q", id.Settings)
			}
			if part := strings.TrimPrefix(s.Name, "jwt.claims."); i < n-1 && (!IsSettingIdent(part) || len(part) > 63 || strings.Contains(part, "$")) {
				t.Fatalf("setting name %q", s.Name)
			}
		}
	})
}
