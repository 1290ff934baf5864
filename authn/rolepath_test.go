package authn

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestParseRolePath(t *testing.T) {
	cases := []struct {
		in, canonical string
		segs          []pathSeg
	}{
		{".role", ".role", []pathSeg{{name: "role"}}},
		{".realm_access.roles[0]", ".realm_access.roles[0]", []pathSeg{{name: "realm_access"}, {name: "roles"}, {isIdx: true}}},
		{`."https://hasura.io/jwt/claims"."x-hasura-default-role"`, `."https://hasura.io/jwt/claims".x-hasura-default-role`,
			[]pathSeg{{name: "https://hasura.io/jwt/claims"}, {name: "x-hasura-default-role"}}},
		{`."role"`, ".role", []pathSeg{{name: "role"}}},
		{`."a\"b\\c"`, `."a\"b\\c"`, []pathSeg{{name: `a"b\c`}}},
		{`.""`, `.""`, []pathSeg{{name: ""}}},
		{`."a.b[0]"`, `."a.b[0]"`, []pathSeg{{name: "a.b[0]"}}},
		{`."é ☃"`, `."é ☃"`, []pathSeg{{name: "é ☃"}}},
		{".a[1][22]", ".a[1][22]", []pathSeg{{name: "a"}, {index: 1, isIdx: true}, {index: 22, isIdx: true}}},
		{".a[007]", ".a[7]", []pathSeg{{name: "a"}, {index: 7, isIdx: true}}},
		{".$x_1-y", ".$x_1-y", []pathSeg{{name: "$x_1-y"}}},
		{".a[0].b", ".a[0].b", []pathSeg{{name: "a"}, {isIdx: true}, {name: "b"}}},
		{".a[2147483647]", ".a[2147483647]", []pathSeg{{name: "a"}, {index: 2147483647, isIdx: true}}},
	}
	for _, c := range cases {
		p, err := ParseRolePath(c.in)
		if err != nil {
			t.Errorf("ParseRolePath(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(p.segs, c.segs) {
			t.Errorf("ParseRolePath(%q) = %+v, want %+v", c.in, p.segs, c.segs)
		}
		if p.String() != c.canonical {
			t.Errorf("ParseRolePath(%q).String() = %q, want %q", c.in, p.String(), c.canonical)
		}
		again, err := ParseRolePath(p.String())
		if err != nil || !reflect.DeepEqual(again, p) {
			t.Errorf("round trip of %q: %+v, %v", c.in, again, err)
		}
	}

	bad := map[string]string{
		"":               "empty",
		".":              "expected a name",
		"role":           "unexpected",
		"[0]":            "must start with a name",
		".a.":            "expected a name",
		".a..b":          "expected a name",
		".a[":            "unterminated '['",
		".a[]":           "non-negative integer",
		".a[-1]":         "non-negative integer",
		".a[+1]":         "non-negative integer",
		".a[x]":          "non-negative integer",
		".a[ 1]":         "non-negative integer",
		".a[2147483648]": "too large",
		`."abc`:          "unterminated quoted name",
		`."a\n"`:         `only \" and \\ escapes`,
		`."a\`:           `only \" and \\ escapes`,
		".a b":           "unexpected",
		`.a"b"`:          "unexpected",
		".é":             "expected a name",
		".a]":            "unexpected",
	}
	for in, want := range bad {
		_, err := ParseRolePath(in)
		if err == nil {
			t.Errorf("ParseRolePath(%q) succeeded", in)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ParseRolePath(%q) error %q does not contain %q", in, err, want)
		}
	}
}

func TestRolePathLookup(t *testing.T) {
	var claims map[string]any
	d := json.NewDecoder(strings.NewReader(`{
		"role": "r",
		"realm_access": {"roles": ["first", "second"]},
		"https://hasura.io/jwt/claims": {"x-hasura-default-role": "h"},
		"n": null,
		"num": 1.5,
		"nested": [[{"a": "deep"}]],
		"q\"b\\": "quoted"
	}`))
	d.UseNumber()
	if err := d.Decode(&claims); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path  string
		want  any
		found bool
	}{
		{".role", "r", true},
		{".realm_access.roles[0]", "first", true},
		{".realm_access.roles[1]", "second", true},
		{".realm_access.roles[2]", nil, false},
		{".realm_access.roles", []any{"first", "second"}, true},
		{`."https://hasura.io/jwt/claims"."x-hasura-default-role"`, "h", true},
		{".n", nil, true},
		{".num", json.Number("1.5"), true},
		{".nested[0][0].a", "deep", true},
		{".nested[0].a", nil, false},
		{".role[0]", nil, false},
		{".role.x", nil, false},
		{".missing", nil, false},
		{`."q\"b\\"`, "quoted", true},
	}
	for _, c := range cases {
		p, err := ParseRolePath(c.path)
		if err != nil {
			t.Fatal(err)
		}
		got, found := p.Lookup(claims)
		if found != c.found || !reflect.DeepEqual(got, c.want) {
			t.Errorf("Lookup(%s) = %v, %v; want %v, %v", c.path, got, found, c.want, c.found)
		}
	}
	if _, ok := (RolePath{}).Lookup(claims); ok {
		t.Error("zero RolePath found something")
	}
	p, _ := ParseRolePath(".role")
	if _, ok := p.Lookup(nil); ok {
		t.Error("Lookup(nil) found something")
	}
}
