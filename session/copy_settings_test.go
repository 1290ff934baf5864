package session_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
	"github.com/pgtoken/pgtoken/wire"
)

func TestCopyInAndOutRunAsTheToken(t *testing.T) {
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	// COPY TO STDOUT from an RLS table: only alice's rows.
	var out bytes.Buffer
	if _, err := a.CopyTo(ctx(t), &out, "copy (select owner, title from todos order by id) to stdout"); err != nil {
		t.Fatal(err)
	}
	for _, l := range pgtest.Lines(out.String()) {
		if !strings.HasPrefix(l, "alice\t") {
			t.Fatalf("copy out saw another owner's row: %q", l)
		}
	}
	if n := len(pgtest.Lines(out.String())); n != 3 {
		t.Fatalf("copy out rows = %d", n)
	}
	// COPY FROM STDIN into a table whose owner defaults to the sub claim.
	tag, err := a.CopyFrom(ctx(t), strings.NewReader("one\ntwo\nthree\n"), "copy notes(body) from stdin")
	if err != nil || tag.RowsAffected() != 3 {
		t.Fatalf("copy in: %v %v", tag, err)
	}
	got := rows(t, a, "select owner, count(*) from notes group by owner")
	if len(got) != 1 || got[0][0] != "alice" || got[0][1] != "3" {
		t.Fatalf("copied rows: %q", got)
	}
	// A source that fails mid-copy sends CopyFail: nothing is inserted and
	// the session goes on.
	_, err = a.CopyFrom(ctx(t), io.MultiReader(strings.NewReader("four\n"), failingReader{}), "copy notes(body) from stdin")
	if err == nil {
		t.Fatal("a failing source did not fail the copy")
	}
	if got := rows(t, a, "select count(*) from notes"); got[0][0] != "3" {
		t.Fatalf("after CopyFail: %q", got)
	}
	// Bad data: the server's error mid-copy.
	_, err = a.CopyFrom(ctx(t), strings.NewReader("ok\n"+strings.Repeat("x\ty\tz\n", 1000)), "copy notes(body) from stdin")
	if pe := pgErr(err); pe == nil || pe.Code != "22P04" {
		t.Fatalf("bad copy data: %v", err)
	}
	if got := rows(t, a, whoami); got[0][1] != "alice" {
		t.Fatalf("after a failed copy: %q", got)
	}
	// Inside an explicit transaction, then rolled back.
	rows(t, a, "begin")
	if _, err := a.CopyFrom(ctx(t), strings.NewReader("in tx\n"), "copy notes(body) from stdin"); err != nil {
		t.Fatal(err)
	}
	rows(t, a, "rollback")
	if got := rows(t, a, "select count(*) from notes"); got[0][0] != "3" {
		t.Fatalf("after rollback: %q", got)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("source broke") }

func TestSessionSettingsFollowTheClientAndNeverLeak(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 })
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, a, "set statement_timeout = '5s'; set search_path = api, pg_catalog; set myapp.tenant = 'acme'")
	rows(t, a, "set local work_mem = '1MB'")
	for range 3 {
		got := rows(t, a, "select current_setting('statement_timeout'), current_setting('search_path'), current_setting('myapp.tenant', true), current_setting('work_mem')")
		if fmt.Sprint(got[0]) != "[5s api, pg_catalog acme 4MB]" {
			t.Fatalf("alice's settings: %q", got)
		}
		got = rows(t, b, "select current_setting('statement_timeout'), current_setting('search_path'), coalesce(current_setting('myapp.tenant', true), '')")
		if got[0][0] != "0" || got[0][1] != "api, public" || got[0][2] != "" {
			t.Fatalf("bob sees alice's settings: %q", got)
		}
	}
	// SET inside a rolled-back transaction does not stick (Postgres).
	rows(t, a, "begin; set statement_timeout = '9s'; rollback")
	if got := rows(t, a, "show statement_timeout"); got[0][0] != "5s" {
		t.Fatalf("rolled-back SET stuck: %q", got)
	}
	// set_config(..., false) with a literal name, as pg_dump writes it.
	rows(t, a, "select pg_catalog.set_config('search_path', 'public', false)")
	if got := rows(t, a, "show search_path"); got[0][0] != "public" {
		t.Fatalf("set_config: %q", got)
	}
	rows(t, a, "reset statement_timeout")
	if got := rows(t, a, "show statement_timeout"); got[0][0] != "0" {
		t.Fatalf("reset: %q", got)
	}
	// A statement_timeout set by the client applies to it.
	rows(t, a, "set statement_timeout = '100ms'")
	if _, err := a.Exec(ctx(t), "select pg_sleep(1)").ReadAll(); pgErr(err) == nil || pgErr(err).Code != "57014" {
		t.Fatalf("statement_timeout not applied: %v", err)
	}
	if _, err := b.Exec(ctx(t), "select pg_sleep(0.3)").ReadAll(); err != nil {
		t.Fatalf("bob got alice's statement_timeout: %v", err)
	}
}

func TestStartupParametersFollowTheClient(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 })
	cfg, err := pgconn.ParseConfig(env.DSN(pgtest.UserToken(t, "alice")))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "alice-app"
	cfg.RuntimeParams["TimeZone"] = "Asia/Tokyo"
	cfg.RuntimeParams["DateStyle"] = "German"
	cfg.RuntimeParams["options"] = "-c statement_timeout=3s -c search_path=api,public"
	a, err := pgconn.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx(t))
	if a.ParameterStatus("application_name") != "alice-app" || a.ParameterStatus("TimeZone") != "Asia/Tokyo" || !strings.HasPrefix(a.ParameterStatus("DateStyle"), "German") {
		t.Fatalf("ParameterStatus: app=%q tz=%q ds=%q", a.ParameterStatus("application_name"), a.ParameterStatus("TimeZone"), a.ParameterStatus("DateStyle"))
	}
	b := env.Connect(pgtest.UserToken(t, "bob"))
	if b.ParameterStatus("application_name") == "alice-app" || b.ParameterStatus("TimeZone") == "Asia/Tokyo" {
		t.Fatal("bob was told alice's parameters")
	}
	for range 3 {
		got := rows(t, a, "select current_setting('application_name'), current_setting('TimeZone'), current_setting('statement_timeout'), to_char(date '2024-03-01', 'DD.MM.YYYY') = (date '2024-03-01')::text")
		if fmt.Sprint(got[0]) != "[alice-app Asia/Tokyo 3s t]" {
			t.Fatalf("alice's startup settings: %q", got)
		}
		got = rows(t, b, "select current_setting('application_name'), current_setting('TimeZone'), current_setting('statement_timeout')")
		if got[0][0] == "alice-app" || got[0][1] == "Asia/Tokyo" || got[0][2] == "3s" {
			t.Fatalf("bob got alice's startup settings: %q", got)
		}
	}
	// Invalid settings are refused at login, as Postgres does.
	cfg2, _ := pgconn.ParseConfig(env.DSN(pgtest.UserToken(t, "carol")))
	cfg2.RuntimeParams["DateStyle"] = "nonsense"
	if _, err := pgconn.ConnectConfig(ctx(t), cfg2); pgErr(err) == nil || pgErr(err).Code != "22023" {
		t.Fatalf("bad DateStyle: %v", err)
	}
	cfg3, _ := pgconn.ParseConfig(env.DSN(pgtest.UserToken(t, "carol")))
	cfg3.RuntimeParams["options"] = "-c role=web_admin"
	if _, err := pgconn.ConnectConfig(ctx(t), cfg3); pgErr(err) == nil || pgErr(err).Code != "42501" {
		t.Fatalf("role in options: %v", err)
	}
}

func TestParameterStatusFromTheClientsOwnSet(t *testing.T) {
	env := pgtest.Start(t, func(c *config.Config) { c.Pool.Size = 1 })
	a := env.Connect(pgtest.UserToken(t, "alice"))
	b := env.Connect(pgtest.UserToken(t, "bob"))
	rows(t, a, "set application_name = 'changed-by-alice'")
	if got := a.ParameterStatus("application_name"); got != "changed-by-alice" {
		t.Fatalf("alice's ParameterStatus: %q", got)
	}
	rows(t, b, whoami)
	rows(t, a, whoami)
	if got := b.ParameterStatus("application_name"); got == "changed-by-alice" {
		t.Fatal("bob was told alice's application_name")
	}
	if got := a.ParameterStatus("application_name"); got != "changed-by-alice" {
		t.Fatalf("alice's ParameterStatus after sharing: %q", got)
	}
}

func TestLargeResultStreamsWithBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("large result")
	}
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	// Read the result as raw frames with a small buffer, skipping each row,
	// so the test's own client holds almost nothing and the heap's growth
	// is pgtoken's.
	hc, err := a.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	q := &pgproto3.Query{String: "select repeat('x', 1000) from generate_series(1, 200000) union all select repeat('y', 16<<20) from generate_series(1, 3)"}
	b, _ := q.Encode(nil)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	peak := before.HeapInuse
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				peak = max(peak, m.HeapInuse)
			}
		}
	}()
	if _, err := hc.Conn.Write(b); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(hc.Conn, 4096, 4096)
	var n, total int
	for {
		typ, size, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if typ == 'D' {
			n++
			total += size
		}
		if typ == 'E' {
			t.Fatal("error response")
		}
		if err := r.Skip(); err != nil {
			t.Fatal(err)
		}
		if typ == 'Z' {
			break
		}
	}
	close(done)
	<-stopped
	if n != 200003 || total < 200000*1000+3*(16<<20) {
		t.Fatalf("rows %d, bytes %d", n, total)
	}
	if grew := int64(peak) - int64(before.HeapInuse); grew > 16<<20 {
		t.Fatalf("pgtoken's heap grew by %d MB while relaying %d MB", grew>>20, total>>20)
	}
}
