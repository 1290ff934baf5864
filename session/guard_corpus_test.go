package session_test

// The guard corpus (testdata/guard/corpus.txt) through pgtoken: every entry
// as a simple Query and as Parse/Bind/Execute/Sync, inside a transaction
// and outside, in both pooling modes. Whatever happens to an entry, the
// identity (current_user, session_user, the role setting and the claims)
// stays the token's in the same transaction, in the client's next one and
// in the next client's on the same server connection (the pool has one).
// Deny entries are refused with 42501; allow entries run.

import (
	"fmt"
	"github.com/pgtoken/pgtoken/internal/guardcorpus"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/session/sqlscan"
)

const identitySQL = `select current_user::text, session_user::text, current_setting('role'),
	coalesce(current_setting('jwt.claims.sub', true), '<unset>'), coalesce(current_setting('request.jwt.claims', true), '<unset>')`

// tokenIdentity reads the identity a transaction runs with, over the simple or
// the extended protocol.
func tokenIdentity(t *testing.T, c *pgconn.PgConn, extended bool) (string, error) {
	t.Helper()
	if extended {
		res := c.ExecParams(ctx(t), identitySQL, nil, nil, nil, nil).Read()
		if res.Err != nil {
			return "", res.Err
		}
		return fmt.Sprint(flatten([]*pgconn.Result{res})), nil
	}
	res, err := c.Exec(ctx(t), identitySQL).ReadAll()
	if err != nil {
		return "", err
	}
	return fmt.Sprint(flatten(res)), nil
}

// runEntry runs sql over the simple or the extended protocol.
func runEntry(t *testing.T, c *pgconn.PgConn, sql string, extended bool) error {
	if extended {
		return c.ExecParams(ctx(t), sql, nil, nil, nil, nil).Read().Err
	}
	_, err := c.Exec(ctx(t), sql).ReadAll()
	return err
}

func sqlstateOf(err error) string {
	if err == nil {
		return ""
	}
	if pe := pgErr(err); pe != nil {
		return pe.Code
	}
	return "(no SQLSTATE: " + err.Error() + ")"
}

// ownStatement reports whether pgtoken answers sql itself (RESET ALL,
// DISCARD, DEALLOCATE, SQL-level PREPARE/EXECUTE): in the extended
// protocol they are refused with 0A000 by design, and RESET ALL as a
// simple query outside a transaction resets only the client's own
// settings (the claims are not among them).
func ownStatement(stmts []sqlscan.Statement) bool {
	for _, st := range stmts {
		switch st.Kind {
		case sqlscan.KindResetAll, sqlscan.KindDiscard, sqlscan.KindDeallocate, sqlscan.KindPrepare, sqlscan.KindExecute:
			return true
		}
	}
	return false
}

func TestGuardCorpusThroughPgtoken(t *testing.T) {
	entries, err := guardcorpus.Load(filepath.Join(pgtest.Root(), "testdata", "guard", "corpus.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 100 {
		t.Fatalf("only %d corpus entries", len(entries))
	}
	for _, mode := range []string{"transaction", "session"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "session" && testing.Short() {
				t.Skip("-short")
			}
			env := pgtest.Start(t, func(c *config.Config) {
				c.Pool.Mode = mode
				c.Pool.Size = 1 // every client runs on the same server connection
				// The corpus tries temporary objects: web_user may make
				// them here (pgtoken refuses such a role by default).
				c.Checks.Skip = config.StringList{"temporary"}
			})
			env.Superuser("create table public.users (id int, role text, sub text); grant all on public.users to web_user; grant temporary on database " + env.DB + " to web_user")
			runCorpus(t, env, mode, entries)
		})
	}
}

func runCorpus(t *testing.T, env *pgtest.Env, mode string, entries []guardcorpus.Entry) {
	tok := pgtest.Token(t, map[string]any{"role": "web_user", "sub": "42"})
	nextTok := pgtest.Token(t, map[string]any{"role": "web_user", "sub": "next"})
	baseline := func(token string) string {
		c := env.Connect(token)
		id, err := tokenIdentity(t, c, false)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close(ctx(t))
		if !strings.HasPrefix(id, "[[web_user authenticator web_user ") {
			t.Fatalf("baseline identity: %s", id)
		}
		return id
	}
	want, wantNext := baseline(tok), baseline(nextTok)
	refusedOwn := 0

	for _, e := range entries {
		stmts := sqlscan.Split(e.SQL, nil)
		for _, extended := range []bool{false, true} {
			for _, inTx := range []bool{true, false} {
				proto := map[bool]string{false: "simple", true: "extended"}[extended]
				where := map[bool]string{false: "outside", true: "in a transaction"}[inTx]
				name := fmt.Sprintf("line %d, %s, %s: %q", e.Line, proto, where, e.SQL)
				c := env.Connect(tok)
				if inTx {
					rows(t, c, "begin")
				}
				err := runEntry(t, c, e.SQL, extended)
				got := sqlstateOf(err)

				// The verdict.
				ok := false
				switch {
				case ownStatement(stmts) && (extended || inTx):
					ok = got == "0A000" || e.Deny && got == "42501"
					if ok && got == "0A000" {
						refusedOwn++
					}
				case e.Deny:
					ok = got == "42501" || ownStatement(stmts) && got == ""
				case mode == "transaction" && got == "0A000" && stmts[0].Flags&sqlscan.FlagTempObject != 0:
					ok = true // temporary objects need session mode
				case extended && len(stmts) > 1:
					ok = got == "42601" // cannot insert multiple commands into a prepared statement
				case !inTx && got == "25P01":
					ok = strings.Contains(strings.ToUpper(e.SQL), "SAVEPOINT") // only in a transaction block
				default:
					ok = got == ""
				}
				if !ok {
					t.Errorf("%s: got %q (%v)", name, got, err)
				}

				// The same transaction: untouched, or aborted by the refusal.
				if inTx {
					if err == nil {
						if id, err := tokenIdentity(t, c, extended); err != nil || id != want {
							t.Errorf("%s: same transaction runs as %s (%v)", name, id, err)
						}
					} else if _, err := c.Exec(ctx(t), "select 1").ReadAll(); sqlstateOf(err) != "25P02" {
						t.Errorf("%s: after the refusal the transaction is not aborted: %v", name, err)
					}
					if _, err := c.Exec(ctx(t), "rollback").ReadAll(); err != nil {
						t.Fatalf("%s: rollback: %v", name, err)
					}
				}
				// The next transactions, both protocols.
				for _, ext := range []bool{false, true} {
					if id, err := tokenIdentity(t, c, ext); err != nil || id != want {
						t.Errorf("%s: next transaction (extended %t) runs as %s (%v)", name, ext, id, err)
					}
				}
				_ = c.Close(ctx(t))
				// The next client on the same server connection.
				n := env.Connect(nextTok)
				if id, err := tokenIdentity(t, n, false); err != nil || id != wantNext {
					t.Errorf("%s: the next client runs as %s (%v)", name, id, err)
				}
				_ = n.Close(ctx(t))
			}
		}
	}
	t.Logf("%s mode: %d entries × 2 protocols × in/outside a transaction; %d refusals with 0A000 of statements pgtoken answers itself", mode, len(entries), refusedOwn)
}
