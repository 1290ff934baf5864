package authn

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestSettingPart(t *testing.T) {
	for _, tc := range []struct {
		name, part string
		ok         bool
	}{
		{"sub", "sub", true},
		{"userId", "userId", true},
		{"_", "_", true},
		{"x-hasura-user-id", "x_hasura_user_id", true},
		{"X-PLATFORMATIC-USER-ID", "X_PLATFORMATIC_USER_ID", true},
		{"https://hasura.io/jwt/claims", "https___hasura_io_jwt_claims", true},
		{"st-role", "st_role", true},
		{"a.b", "a_b", true},
		{"a$b", "a_b", true}, // Postgres would take '$', the rule does not
		{"with space", "with_space", true},
		{"ünï", "_n_", true},  // a character, not a byte, becomes one '_'
		{"😀", "_", true},      // four bytes, one character
		{"-1", "_1", true},    // the digit is no longer first
		{"2fa", "2fa", false}, // Postgres: a part cannot start with a digit
		{"", "", false},       // nor be empty
		{"0", "0", false},     //
		{"é2", "_2", true},    //
		{strings.Repeat("a", 63), strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), strings.Repeat("a", 64), false}, // SET would truncate it to 63 bytes
		{strings.Repeat("é", 40), strings.Repeat("_", 40), true},  // 80 bytes in, 40 out
		{"\u00a0", "_", true},
	} {
		part, ok := settingPart(tc.name)
		if part != tc.part || ok != tc.ok {
			t.Errorf("settingPart(%q) = %q, %v; want %q, %v", tc.name, part, ok, tc.part, tc.ok)
		}
		if ok && !IsSettingIdent(part) {
			t.Errorf("settingPart(%q) = %q, which the prelude would refuse", tc.name, part)
		}
	}
}

// members decodes a JSON object into sorted members, as claimSet does.
func members(t *testing.T, payload string) []member {
	t.Helper()
	m, dup, err := decodeObject([]byte(payload))
	if err != nil || dup != "" {
		t.Fatalf("%s: %v %q", payload, err, dup)
	}
	return m
}

func TestApplyNamespaces(t *testing.T) {
	const hasura = "https://hasura.io/jwt/claims"
	type got struct {
		Name, Raw, Path string
		Origin          int
	}
	for _, tc := range []struct {
		what       string
		namespaces []string
		payload    string
		want       []got
		err        string
	}{
		{"no namespaces", nil, `{"sub":"1","https://hasura.io/jwt/claims":{"x":1}}`,
			[]got{{hasura, `{"x":1}`, `."https://hasura.io/jwt/claims"`, 0}, {"sub", `"1"`, ".sub", 0}}, ""},
		{"Hasura object lifted", []string{hasura},
			`{"sub":"1","https://hasura.io/jwt/claims":{"x-hasura-user-id":"u","x-hasura-allowed-roles":["a","b"]}}`,
			[]got{
				{"x-hasura-allowed-roles", `["a","b"]`, `."https://hasura.io/jwt/claims".x-hasura-allowed-roles`, 1},
				{"x-hasura-user-id", `"u"`, `."https://hasura.io/jwt/claims".x-hasura-user-id`, 1},
				{"sub", `"1"`, ".sub", 0},
			}, ""},
		{"Hasura stringified_json lifted", []string{hasura},
			`{"https://hasura.io/jwt/claims":"{\"x-hasura-user-id\":\"u\",\"n\":1}"}`,
			[]got{{"n", `1`, `."https://hasura.io/jwt/claims".n`, 1}, {"x-hasura-user-id", `"u"`, `."https://hasura.io/jwt/claims".x-hasura-user-id`, 1}}, ""},
		{"a listed claim that holds no object is kept", []string{hasura}, `{"https://hasura.io/jwt/claims":"user"}`,
			[]got{{hasura, `"user"`, `."https://hasura.io/jwt/claims"`, 0}}, ""},
		{"a string that is not an object is kept", []string{hasura}, `{"https://hasura.io/jwt/claims":"[1]"}`,
			[]got{{hasura, `"[1]"`, `."https://hasura.io/jwt/claims"`, 0}}, ""},
		{"an empty object lifts nothing", []string{hasura}, `{"https://hasura.io/jwt/claims":{},"a":1}`,
			[]got{{"a", "1", ".a", 0}}, ""},
		{"Platformatic prefix stripped", []string{"https://platformatic.dev/"},
			`{"https://platformatic.dev/X-PLATFORMATIC-USER-ID":"42","https://platformatic.dev/":"kept","sub":"s"}`,
			[]got{
				{"https://platformatic.dev/", `"kept"`, `."https://platformatic.dev/"`, 0},
				{"X-PLATFORMATIC-USER-ID", `"42"`, `."https://platformatic.dev/X-PLATFORMATIC-USER-ID"`, 1},
				{"sub", `"s"`, ".sub", 0},
			}, ""},
		{"the first listed namespace applies", []string{"https://a/", "https://a/b/"}, `{"https://a/b/c":1}`,
			[]got{{"b/c", "1", `."https://a/b/c"`, 1}}, ""},
		{"lift and strip in one token", []string{hasura, "https://myapp.example.com/"},
			`{"https://hasura.io/jwt/claims":{"r":"x"},"https://myapp.example.com/roles":["a"]}`,
			[]got{{"r", `"x"`, `."https://hasura.io/jwt/claims".r`, 1}, {"roles", `["a"]`, `."https://myapp.example.com/roles"`, 2}}, ""},
		{"a member named twice", []string{hasura}, `{"https://hasura.io/jwt/claims":{"r":"x","r":"y"}}`,
			nil, `token claim "https://hasura.io/jwt/claims" holds "r" more than once`},
		{"a member named twice, stringified", []string{hasura}, `{"https://hasura.io/jwt/claims":"{\"r\":1,\"r\":2}"}`,
			nil, `token claim "https://hasura.io/jwt/claims" holds "r" more than once`},
		{"NUL inside a stringified object", []string{hasura}, `{"https://hasura.io/jwt/claims":"{\"r\":\"a\\u0000\"}"}`,
			nil, "token claims contain a NUL character"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			named, err := applyNamespaces(members(t, tc.payload), tc.namespaces)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err || err.Reason != ReasonMalformed {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var g []got
			for _, c := range named {
				var compact bytes.Buffer
				_ = json.Compact(&compact, c.raw)
				g = append(g, got{c.name, compact.String(), c.path(), c.origin})
			}
			if !reflect.DeepEqual(g, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", g, tc.want)
			}
		})
	}
}

func TestClaimSettingsNamesAndCollisions(t *testing.T) {
	const hasura = "https://hasura.io/jwt/claims"
	for _, tc := range []struct {
		what       string
		namespaces []string
		payload    string
		settings   string // name=value, comma-separated
		unmappable []string
		shadowed   []string
	}{
		{"identifiers unchanged", nil, `{"sub":"1","role":"r"}`, "p.role=r,p.sub=1", nil, nil},
		{"Hasura", []string{hasura}, `{"https://hasura.io/jwt/claims":{"x-hasura-user-id":"u","x-hasura-default-role":"r"}}`,
			"p.x_hasura_default_role=r,p.x_hasura_user_id=u", nil, nil},
		{"Platformatic", []string{"https://platformatic.dev/"}, `{"https://platformatic.dev/X-PLATFORMATIC-USER-ID":"42"}`,
			"p.X_PLATFORMATIC_USER_ID=42", nil, nil},
		{"Auth0 without its namespace listed", nil, `{"https://myapp.example.com/roles":["a"]}`,
			`p.https___myapp_example_com_roles=["a"]`, nil, nil},
		{"unmappable names", nil, `{"2fa":true,"":1,"ok":1}`, "p.ok=1", []string{`.""`, ".2fa"}, nil},
		{"too long", nil, fmt.Sprintf(`{"%s":1}`, strings.Repeat("a", 64)), "", []string{"." + strings.Repeat("a", 63) + "…"}, nil},
		{"case collision: byte order", nil, `{"x_user":1,"X_USER":2}`, "p.X_USER=2", nil,
			[]string{".x_user (p.X_USER is set from .X_USER)"}},
		{"a name needing no change wins", nil, `{"x-user":1,"x_user":2}`, "p.x_user=2", nil,
			[]string{".x-user (p.x_user is set from .x_user)"}},
		{"a top-level claim wins over a lifted one", []string{hasura},
			`{"sub":"top","https://hasura.io/jwt/claims":{"sub":"lifted"}}`, "p.sub=top", nil,
			[]string{`."https://hasura.io/jwt/claims".sub (p.sub is set from .sub)`}},
		{"also when the top-level one needed a change", []string{hasura},
			`{"x-id":"top","https://hasura.io/jwt/claims":{"x_id":"lifted"}}`, "p.x_id=top", nil,
			[]string{`."https://hasura.io/jwt/claims".x_id (p.x_id is set from .x-id)`}},
		{"the earlier namespace wins", []string{"https://b/", hasura},
			`{"https://hasura.io/jwt/claims":{"id":"h"},"https://b/id":"b"}`, "p.id=b", nil,
			[]string{`."https://hasura.io/jwt/claims".id (p.id is set from ."https://b/id")`}},
		{"three at once", nil, `{"a-b":1,"a.b":2,"a b":3}`, "p.a_b=3", nil,
			[]string{".a-b (p.a_b is set from .\"a b\")", `."a.b" (p.a_b is set from ."a b")`}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			named, err := applyNamespaces(members(t, tc.payload), tc.namespaces)
			if err != nil {
				t.Fatal(err)
			}
			settings, issues := claimSettings(named, "p")
			var parts []string
			for _, s := range settings {
				parts = append(parts, s.Name+"="+s.Value)
			}
			if got := strings.Join(parts, ","); got != tc.settings {
				t.Errorf("settings %s, want %s", got, tc.settings)
			}
			if !reflect.DeepEqual(issues.unmappable, tc.unmappable) || !reflect.DeepEqual(issues.shadowed, tc.shadowed) {
				t.Errorf("issues %q %q, want %q %q", issues.unmappable, issues.shadowed, tc.unmappable, tc.shadowed)
			}
		})
	}
}

func TestNamespacesThroughVerify(t *testing.T) {
	hasuraNS := []string{"https://hasura.io/jwt/claims", "https://platformatic.dev/"}
	for _, tc := range []struct {
		what, roleClaim, payload string
		role                     string
		settings                 map[string]string
	}{
		{"Hasura: the role path addresses a lifted name", ".x-hasura-default-role",
			`{"https://hasura.io/jwt/claims":{"x-hasura-default-role":"web_user","x-hasura-user-id":"u-7","x-hasura-allowed-roles":["web_user"]}}`,
			"web_user", map[string]string{
				"jwt.claims.x_hasura_default_role":  "web_user",
				"jwt.claims.x_hasura_user_id":       "u-7",
				"jwt.claims.x_hasura_allowed_roles": `["web_user"]`,
			}},
		{"Hasura: the path through the object still works", `."https://hasura.io/jwt/claims"."x-hasura-default-role"`,
			`{"https://hasura.io/jwt/claims":{"x-hasura-default-role":"web_user"}}`,
			"web_user", map[string]string{"jwt.claims.x_hasura_default_role": "web_user"}},
		{"Hasura stringified", ".x-hasura-default-role",
			`{"https://hasura.io/jwt/claims":"{\"x-hasura-default-role\":\"reporting\"}"}`,
			"reporting", map[string]string{"jwt.claims.x_hasura_default_role": "reporting"}},
		{"Platformatic: the role path addresses a stripped name", ".X-PLATFORMATIC-ROLE",
			`{"https://platformatic.dev/X-PLATFORMATIC-ROLE":"web_user","https://platformatic.dev/X-PLATFORMATIC-USER-ID":42}`,
			"web_user", map[string]string{"jwt.claims.X_PLATFORMATIC_ROLE": "web_user", "jwt.claims.X_PLATFORMATIC_USER_ID": "42"}},
		{"a top-level claim is the role before a lifted one", ".role",
			`{"role":"web_user","https://hasura.io/jwt/claims":{"role":"reporting"}}`,
			"web_user", map[string]string{"jwt.claims.role": "web_user"}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			v := newV(t, Config{Secret: testSecret, RoleClaim: tc.roleClaim, ClaimsPrefix: "jwt.claims", ClaimsJSON: "request.jwt.claims", ClaimsNamespaces: hasuraNS})
			id := mustVerify(t, v, hs256(t, tc.payload))
			if id.Role != tc.role {
				t.Fatalf("role %q, want %q", id.Role, tc.role)
			}
			got := settingMap(t, id.Settings)
			if got["request.jwt.claims"] != tc.payload {
				t.Fatalf("claims.json %q: not the token's own claims %q", got["request.jwt.claims"], tc.payload)
			}
			delete(got, "request.jwt.claims")
			if !reflect.DeepEqual(got, tc.settings) {
				t.Fatalf("settings %q, want %q", got, tc.settings)
			}
		})
	}
	v := newV(t, Config{Secret: testSecret, ClaimsPrefix: "jwt.claims", ClaimsNamespaces: hasuraNS})
	e := expectReason(t, mustErr(v.Verify(hs256(t, `{"role":"web_user","https://hasura.io/jwt/claims":{"a":1,"a":2}}`))), ReasonMalformed)
	if !strings.Contains(e.Error(), `holds "a" more than once`) {
		t.Fatal(e)
	}
	for _, ns := range [][]string{{""}, {"x", "x"}} {
		if _, err := New(t.Context(), Config{Secret: testSecret, AllowedRoles: []string{"a"}, ClaimsNamespaces: ns}); err == nil {
			t.Errorf("namespaces %q accepted", ns)
		}
	}
}

// Claims left without a setting are logged by name at WARN (once per set
// of names, then at DEBUG), never with a value or the token.
func TestClaimsWithoutSettingAreLogged(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	v := newV(t, Config{Secret: testSecret, ClaimsPrefix: "jwt.claims", Logger: zap.New(core), CacheSize: -1})
	payload := `{"role":"web_user","2fa":"secret-value-1","x-user":"secret-value-2","x_user":"secret-value-3"}`
	tok := hs256(t, payload)
	id := mustVerify(t, v, tok)
	if got := settingMap(t, id.Settings); got["jwt.claims.x_user"] != "secret-value-3" || len(got) != 2 {
		t.Fatalf("settings %q", got)
	}
	mustVerify(t, v, tok)
	entries := logs.FilterMessageSnippet("left without a setting").AllUntimed()
	if len(entries) != 2 || entries[0].Level != zapcore.WarnLevel || entries[1].Level != zapcore.DebugLevel {
		t.Fatalf("log entries %+v", entries)
	}
	f := entries[0].ContextMap()
	if fmt.Sprint(f["unmappable"]) != "[.2fa]" || fmt.Sprint(f["shadowed"]) != "[.x-user (jwt.claims.x_user is set from .x_user)]" {
		t.Fatalf("fields %v", f)
	}
	for _, e := range logs.AllUntimed() {
		text := e.Message + fmt.Sprint(e.ContextMap())
		if strings.Contains(text, "secret-value") || strings.Contains(text, tok[len(tok)-20:]) {
			t.Fatalf("log leaks a value or the token: %s", text)
		}
	}
	// Clean tokens log nothing.
	logs.TakeAll()
	mustVerify(t, v, hs256(t, `{"role":"web_user","sub":"s"}`))
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d log entries for a clean token", n)
	}
}
