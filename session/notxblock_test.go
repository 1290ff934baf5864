package session_test

import (
	"testing"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

func TestStatementsThatCannotRunInATransactionBlock(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Checks.Skip = config.StringList{"create"} // web_user owns a schema here
	})
	env.Superuser("create schema scratch authorization web_user; create table scratch.big(id int); alter table scratch.big owner to web_user")
	a := env.Connect(pgtest.UserToken(t, "alice"))
	// Runs as the token's role: web_user owns scratch.big, so it may index it.
	for _, sql := range []string{
		"create index concurrently big_id on scratch.big(id)",
		"vacuum scratch.big",
		"drop index concurrently scratch.big_id",
	} {
		if _, err := a.Exec(ctx(t), sql).ReadAll(); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// As web_user, not the authenticator: a table it does not own.
	if _, err := a.Exec(ctx(t), "create index concurrently todos_title on api.todos(title)").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "42501" {
		t.Fatalf("index on a table web_user does not own: %v", err)
	}
	// Nothing of alice stays on the only server connection.
	b := env.Connect(pgtest.Token(t, map[string]any{"role": "web_admin"}))
	if got := rows(t, b, "select current_user::text, coalesce(nullif(current_setting('jwt.claims.sub', true), ''), '<none>')"); got[0][0] != "web_admin" || got[0][1] != "<none>" {
		t.Fatalf("next client inherited: %q", got)
	}
	// Inside a transaction Postgres refuses it, as always.
	rows(t, a, "begin")
	if _, err := a.Exec(ctx(t), "vacuum scratch.big").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "25001" {
		t.Fatalf("vacuum in a transaction: %v", err)
	}
	rows(t, a, "rollback")
	// If the identity cannot be set, the statement does not run.
	env.Superuser("revoke web_user from authenticator")
	defer env.Superuser("grant web_user to authenticator")
	if _, err := a.Exec(ctx(t), "vacuum scratch.big").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "42501" {
		t.Fatalf("vacuum without the role: %v", err)
	}
	if got := rows(t, b, "select current_user::text"); got[0][0] != "web_admin" {
		t.Fatalf("after the failure: %q", got)
	}
}
