package lockdown

import (
	"reflect"
	"strings"
	"testing"
)

// rows builds Query rows: each line is "fact|role|a|b|c|d" (missing
// columns are empty).
func rows(lines ...string) [][]string {
	var out [][]string
	for _, l := range lines {
		cols := strings.Split(l, "|")
		for len(cols) < 6 {
			cols = append(cols, "")
		}
		out = append(out, cols)
	}
	return out
}

// base is a locked-down database: login authenticator (NOINHERIT) granted
// web_user and web_anon.
var base = []string{
	"login|authenticator|app|postgres",
	"role|authenticator|",
	"role|web_user|inherit",
	"role|web_anon|inherit",
	"edge|authenticator|web_user|",
	"edge|authenticator|web_anon|",
}

var policy = &Policy{Served: []string{"web_anon", "web_user", "web_admin"}, Console: []string{"web_admin"}}

// brief is one finding, as the table states it.
type brief struct {
	check Check
	role  string
	fix   string
}

func briefs(fs []Finding) []brief {
	var out []brief
	for _, f := range fs {
		out = append(out, brief{f.Check, f.Role, f.FixSQL()})
	}
	return out
}

func TestFindings(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
		role  string  // the login's refusal for this token role
		want  []brief // refusing findings, in order
	}{
		{"locked down", nil, "web_user", nil},
		{"superuser token role", []string{"role|web_user|superuser inherit"}, "web_user",
			[]brief{{Superuser, "web_user", `ALTER ROLE "web_user" NOSUPERUSER;`}}},
		{"another role's findings do not refuse this one", []string{"role|web_anon|bypassrls inherit"}, "web_user", nil},
		{"bypassrls and attributes", []string{"role|web_user|bypassrls inherit createrole replication"}, "web_user",
			[]brief{{BypassRLS, "web_user", `ALTER ROLE "web_user" NOBYPASSRLS;`},
				{RoleAttributes, "web_user", `ALTER ROLE "web_user" NOCREATEROLE NOREPLICATION;`}}},
		{"a superuser login is named only as one", []string{"role|authenticator|superuser", "temporary|authenticator|DATABASE|app|grant|PUBLIC"}, "web_anon",
			[]brief{{Superuser, "authenticator", `ALTER ROLE "authenticator" NOSUPERUSER;`}}},
		{"PUBLIC has TEMPORARY (Postgres's default)", []string{
			"temporary|authenticator|DATABASE|app|grant|PUBLIC",
			"temporary|web_user|DATABASE|app|grant|PUBLIC",
			"temporary|web_anon|DATABASE|app|grant|PUBLIC"}, "web_user",
			[]brief{{Temporary, "authenticator", `REVOKE TEMPORARY ON DATABASE "app" FROM PUBLIC;`},
				{Temporary, "web_user", `REVOKE TEMPORARY ON DATABASE "app" FROM PUBLIC;`}}},
		{"TEMPORARY through a group", []string{"temporary|web_user|DATABASE|app|grant|grp", "edge|web_user|grp|"}, "web_user",
			[]brief{{Temporary, "web_user", `REVOKE TEMPORARY ON DATABASE "app" FROM "grp";`}}},
		{"owning the database: one ALTER, not the owner's own grants", []string{
			"temporary|web_user|DATABASE|app|grant|web_user", "temporary|web_user|DATABASE|app|owner|web_user",
			"create|web_user|DATABASE|app|grant|web_user", "create|web_user|DATABASE|app|owner|web_user",
			"create|web_user|SCHEMA|public|owner|pg_database_owner", "create|web_user|SCHEMA|public|grant|pg_database_owner"}, "web_user",
			[]brief{{Create, "web_user", `ALTER DATABASE "app" OWNER TO "postgres";`},
				{Create, "web_user", `ALTER DATABASE "app" OWNER TO "postgres";`},
				{Temporary, "web_user", `ALTER DATABASE "app" OWNER TO "postgres";`}}},
		{"CREATE on schemas", []string{"create|web_anon|SCHEMA|api|grant|web_anon", "create|web_anon|SCHEMA|x y|owner|web_anon"}, "web_anon",
			[]brief{{Create, "web_anon", `REVOKE CREATE ON SCHEMA "api" FROM "web_anon";`},
				{Create, "web_anon", `ALTER SCHEMA "x y" OWNER TO "postgres";`}}},
		{"a predefined role, directly and through a group", []string{
			"edge|web_user|pg_read_all_data|builtin", "edge|web_user|grp|", "edge|grp|pg_monitor|builtin",
			"edge|pg_monitor|pg_read_all_stats|builtin", "edge|grp|pg_read_all_settings|builtin"}, "web_user",
			[]brief{{PredefinedRoles, "web_user", `REVOKE "pg_read_all_data" FROM "web_user"; REVOKE "pg_monitor" FROM "grp";`}}},
		{"a harmless predefined role", []string{"edge|web_user|pg_read_all_settings|builtin"}, "web_user", nil},
		{"the login's membership through a token role is the token role's", []string{"edge|web_anon|pg_monitor|builtin"}, "web_user", nil},
		{"the login's own predefined role refuses everyone", []string{"edge|authenticator|pg_read_server_files|builtin"}, "web_user",
			[]brief{{PredefinedRoles, "authenticator", `REVOKE "pg_read_server_files" FROM "authenticator";`}}},
		{"an inheriting login", []string{"role|authenticator|inherit", "temporary|authenticator|DATABASE|app|grant|web_user"}, "web_anon",
			[]brief{{NoInherit, "authenticator", `ALTER ROLE "authenticator" NOINHERIT;`}}},
		{"the login owns and holds privileges", []string{
			"owns|authenticator|table|api.t",
			"privilege|authenticator|table column|api.todos.owner|api.todos|owner",
			"privilege|authenticator|function|api.f()",
			"privilege|authenticator|default acl|for role postgres in schema api on tables|postgres|IN SCHEMA api REVOKE ALL ON TABLES",
			"privilege|authenticator|parameter ACL|work_mem"}, "web_user",
			[]brief{{LoginPrivileges, "authenticator", `REASSIGN OWNED BY "authenticator" TO "postgres"; ` +
				`REVOKE ALL (owner) ON TABLE api.todos FROM "authenticator"; REVOKE ALL ON ROUTINE api.f() FROM "authenticator"; ` +
				`ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA api REVOKE ALL ON TABLES FROM "authenticator"; ` +
				`REVOKE ALL ON PARAMETER work_mem FROM "authenticator";`}}},
		{"the login as a token role", nil, "authenticator", []brief{{UpstreamLogin, "authenticator", ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(rows(append(append([]string(nil), base...), tc.extra...)...))
			if err != nil {
				t.Fatal(err)
			}
			if got := briefs(f.Refusal(tc.role, policy)); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("refusal of %s:\n got %q\nwant %q", tc.role, got, tc.want)
			}
		})
	}
}

func TestSkipsAndPrivilegedRoles(t *testing.T) {
	f, err := Parse(rows(append(append([]string(nil), base...),
		"role|web_user|bypassrls inherit",
		"temporary|web_user|DATABASE|app|grant|PUBLIC",
		"temporary|authenticator|DATABASE|app|grant|PUBLIC")...))
	if err != nil {
		t.Fatal(err)
	}
	p := &Policy{Served: policy.Served, Skip: []Check{Temporary}}
	if got := briefs(f.Refusal("web_user", p)); !reflect.DeepEqual(got, []brief{{BypassRLS, "web_user", `ALTER ROLE "web_user" NOBYPASSRLS;`}}) {
		t.Fatalf("temporary skipped: %q", got)
	}
	p = &Policy{Served: policy.Served, Privileged: []string{"web_user"}}
	// A privileged role's own findings refuse nothing; the login's still do.
	if got := briefs(f.Refusal("web_user", p)); !reflect.DeepEqual(got, []brief{{Temporary, "authenticator", `REVOKE TEMPORARY ON DATABASE "app" FROM PUBLIC;`}}) {
		t.Fatalf("privileged: %q", got)
	}
	for _, fd := range f.Findings(p) {
		if fd.Role == "web_user" && (!fd.Allowed || fd.Refuses()) {
			t.Fatalf("privileged role's finding: %+v", fd)
		}
	}
}

func TestMissingRoles(t *testing.T) {
	f, err := Parse(rows(base...))
	if err != nil {
		t.Fatal(err)
	}
	// Without names asked about, nothing is said about missing roles.
	if got := f.Findings(policy); len(got) != 0 {
		t.Fatalf("%+v", got)
	}
	f.asked = true
	f.exists = map[string]bool{"web_user": true, "web_anon": true, "web_other": true}
	p := &Policy{Served: []string{"web_user", "web_other", "web_new", "web_admin"}, Console: []string{"web_admin"}}
	want := []brief{
		{Granted, "web_other", `GRANT "web_other" TO "authenticator";`},
		{Granted, "web_new", `CREATE ROLE "web_new" NOLOGIN; GRANT "web_new" TO "authenticator";`},
	}
	got := f.Findings(p)
	if !reflect.DeepEqual(briefs(got), want) {
		t.Fatalf("got %q, want %q", briefs(got), want)
	}
	for _, fd := range got {
		if fd.Refuses() {
			t.Fatalf("a missing role refuses logins: %+v", fd)
		}
	}
}

func TestParseRefusesWhatItCannotJudge(t *testing.T) {
	for _, rs := range [][][]string{
		{{"x"}},
		rows("role|authenticator|"),
		rows("login|authenticator|app|postgres"),
		rows("login|authenticator|app|postgres", "role|authenticator|", "mystery|x"),
	} {
		if _, err := Parse(rs); err == nil {
			t.Errorf("parsed %q", rs)
		}
	}
}
