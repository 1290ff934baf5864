package sqlscan

import "testing"

// No spelling of a name reaches pgtoken's own statements and portals, or
// the view listing every statement on the connection; names that merely
// contain the word pass.
func TestReservedNames(t *testing.T) {
	p := &Policy{ClaimsPrefix: "jwt.claims"}
	for _, tc := range []struct {
		sql  string
		deny bool
	}{
		{"execute pgtoken_prelude_5('role','admin')", true},
		{"EXPLAIN ANALYZE EXECUTE PGTOKEN_PRELUDE_5('role', 'admin')", true},
		{`explain execute "pgtoken_prelude_5"('role','admin')`, true},
		{`explain execute U&"pgtoken\005fprelude_5"('role','admin')`, true},
		{`explain execute U&"pgtoken!005fprelude_5" UESCAPE '!' ('role','admin')`, true},
		{"create temp table x on commit drop as execute pgtoken_session_5('role','admin')", true},
		{"deallocate pgtoken_s_0123", true},
		{"fetch all from pgtoken_p", true},
		{"close pgtoken_p", true},
		{"select * from pg_prepared_statements", true},
		{"select * from pg_catalog.pg_prepared_statement()", true},
		{`select * from "PG_PREPARED_STATEMENTS"`, false}, // another relation: names in quotes keep their case
		{`select * from pg_catalog."pg_prepared_statements"`, true},
		{"select 'execute pgtoken_prelude_5' as text", false},
		{"select mypgtoken_value, pgtoken from t", false},
		{"select 1 -- pgtoken_prelude_5", false},
	} {
		v := p.Check(tc.sql, nil)
		if (v != nil) != tc.deny {
			t.Errorf("%s: violation %v, want deny %v", tc.sql, v, tc.deny)
		}
	}
}

// Objects created in the temporary schema outlive the transaction, in any
// spelling of its name.
func TestTempSchemaSpellings(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		temp bool
	}{
		{"create function pg_temp.f() returns int language sql as 'select 1'", true},
		{`create function "pg_temp".f() returns int language sql as 'select 1'`, true},
		{`create function U&"pg\005ftemp".f() returns int language sql as 'select 1'`, true},
		{"create table PG_TEMP.todos (id int)", true},
		{"create table pg_temp_3.todos (id int)", true},
		{`create table "pg_temp_12".todos (id int)`, true},
		{"create table pg_temporary.todos (id int)", false},
		{"create table pg_temp_x.todos (id int)", false},
		{`create table "PG_TEMP".todos (id int)`, false},
		{"create table api.todos2 (id int)", false},
	} {
		st := Split(tc.sql, nil)
		if got := len(st) == 1 && st[0].Flags&FlagTempObject != 0; got != tc.temp {
			t.Errorf("%s: temporary %v, want %v", tc.sql, got, tc.temp)
		}
	}
}
