package session_test

// Transaction defaults (default_transaction_*) that pgtoken sets in a
// Query of its own ahead of the client's transaction.

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// connectWith logs in through pgtoken with startup parameters.
func (a *atk) connectWith(t *testing.T, tok string, params map[string]string) *pgconn.PgConn {
	t.Helper()
	cfg, err := pgconn.ParseConfig(a.env.DSN(tok))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	cx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(cx, cfg)
	if err != nil {
		acceptRefusal(t, a.setup, "pgtoken refused a login", err)
		t.Fatalf("connect through pgtoken: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// TestAttackTxDefaultsResetKeepsOwnSession: session mode. A client that
// connected with default_transaction_isolation set keeps a WITH HOLD
// cursor and a LISTEN on its own connection, then runs RESET ALL: as
// directly, the cursor and the LISTEN stay (RESET ALL resets settings
// only) and the isolation is the startup one.
func TestAttackTxDefaultsResetKeepsOwnSession(t *testing.T) {
	eachAttackEnvOf(t, attackSetups, []string{"session"}, nil, func(t *testing.T, a *atk) {
		for _, v := range []struct {
			name   string
			params map[string]string
			iso    string
		}{
			{"no-startup-defaults", nil, "read committed"},
			{"startup-isolation", map[string]string{"default_transaction_isolation": "repeatable read"}, "repeatable read"},
		} {
			t.Run(v.name, func(t *testing.T) { txDefaultsReset(t, a, v.params, v.iso) })
		}
	})
}

func txDefaultsReset(t *testing.T, a *atk, params map[string]string, iso string) {
	{
		c := a.connectWith(t, a.token("web_user", "mallory"), params)
		defer func() { _ = c.Close(ctx(t)) }()
		for _, q := range []string{"declare atk_c cursor with hold for select 1", "listen atk_ch", "set default_transaction_read_only = on", "reset all"} {
			if _, err := simpleRows(t, c, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		rows, err := simpleRows(t, c, `select current_setting('transaction_isolation'), current_setting('transaction_read_only'),
			coalesce((select string_agg(name, ',') from pg_cursors), '<none>'),
			coalesce((select string_agg(c, ',') from pg_listening_channels() c), '<none>')`)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("after RESET ALL: %q", rows)
		if got := rows[0]; got[0] != iso || got[1] != "off" || got[2] != "atk_c" || got[3] != "atk_ch" {
			t.Errorf("after RESET ALL on its own connection: isolation %s, read only %s, cursors %s, listening %s; want %s, off, atk_c, atk_ch (as directly)", got[0], got[1], got[2], got[3], iso)
		}
		a.probe(t, "after", c, true, "web_user", "mallory")
	}
}
