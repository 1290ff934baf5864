package session_test

// Secrets audit (issue 4): tokens, the JWT secret and upstream passwords
// never appear in the log (every level), in /metrics, in the admin
// console's SHOW CONFIG or in any error message a client gets.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pgtoken/pgtoken/internal/app"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// lockedBuffer is a log sink safe for concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Sync() error { return nil }

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func randomWord(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func TestSecretsNeverLeak(t *testing.T) {
	pg, db := pgtest.NewDB(t)
	login := "audit_" + db
	// Passwords with spaces and quotes, in a DSN written with spaces around
	// "=": the forms a naive redaction misses.
	upPass := randomWord("UpPass-") + " " + randomWord("second-") + ` it's`
	wrongPass := randomWord("WrongPass-")
	secret := randomWord("JwtSecret-") + randomWord("-")
	quoted := "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(upPass) + "'"
	env0 := &pgtest.Env{T: t, PG: pg, DB: db}
	env0.Superuser(fmt.Sprintf(`create role %[1]s login noinherit password %[2]s; grant web_anon, web_user, web_admin to %[1]s; grant connect on database %[3]s to %[1]s`,
		login, "'"+strings.ReplaceAll(upPass, "'", "''")+"'", db))

	cfg := pgtest.Config(pg, db)
	cfg.Upstream = fmt.Sprintf("host=127.0.0.1 port=%d user=%s password = %s dbname=%s sslmode=disable", pg.Port, login, quoted, db)
	cfg.Databases = map[string]config.Database{
		"wrongpw": {Upstream: fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", login, wrongPass, pg.Port, db)},
	}
	cfg.JWT.Secret = secret
	cfg.AdminRoles = config.StringList{"web_admin"}
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.LogLevel = "debug"
	var logBuf lockedBuffer
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), &logBuf, zapcore.DebugLevel))
	a, err := app.Start(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	env := &pgtest.Env{T: t, PG: pg, DB: db, App: a}

	sign := func(claims jwt.MapClaims, key string) string {
		if _, ok := claims["exp"]; !ok {
			claims["exp"] = time.Now().Add(time.Hour).Unix()
		}
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(key))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := sign(jwt.MapClaims{"role": "web_user", "sub": "auditor"}, secret)
	admin := sign(jwt.MapClaims{"role": "web_admin", "sub": "ops"}, secret)
	tokens := []string{good, admin,
		sign(jwt.MapClaims{"role": "web_user", "exp": time.Now().Add(-time.Hour).Unix()}, secret), // expired
		sign(jwt.MapClaims{"role": "postgres"}, secret),                                           // role not allowed
		sign(jwt.MapClaims{"role": "web_user"}, "not-the-secret-"+randomWord("")),                 // bad signature
		good[:len(good)-4] + "AAAA",                                                               // tampered signature
		sign(jwt.MapClaims{"role": "web_user", "sub": strings.Repeat("s", 70000)}, secret),        // too large
		strings.SplitN(good, ".", 2)[1],                                                           // not a JWT
	}
	var clientMsgs []string
	note := func(err error) {
		if err != nil {
			msg := err.Error()
			if pe := pgErr(err); pe != nil {
				msg += " | " + pe.Detail + " | " + pe.Hint + " | " + pe.Where
			}
			clientMsgs = append(clientMsgs, msg)
		}
	}
	connect := func(dbname, token string) (*pgconn.PgConn, error) {
		pc, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=anyone dbname=%s sslmode=disable", a.Port(), dbname))
		if err != nil {
			t.Fatal(err)
		}
		pc.Password = token
		return pgconn.ConnectConfig(ctx(t), pc)
	}

	// Logins, good and bad, to the working upstream and the one with the
	// wrong password; the secret itself and the upstream password sent as
	// tokens.
	for _, tok := range append(tokens, secret, upPass, wrongPass) {
		for _, dbname := range []string{db, "wrongpw"} {
			cc, err := connect(dbname, tok)
			note(err)
			if err == nil {
				_, qerr := cc.Exec(ctx(t), "select current_user; set role web_admin").ReadAll()
				note(qerr)
				_ = cc.Close(ctx(t))
			}
		}
	}
	// A working session whose server connection is killed under it.
	cc, err := connect(db, good)
	if err != nil {
		t.Fatal(err)
	}
	rows(t, cc, "begin")
	env.Superuser("select pg_terminate_backend(pid) from pg_stat_activity where usename = '" + login + "'")
	_, err = cc.Exec(ctx(t), "select 1").ReadAll()
	note(err)
	_ = cc.Close(ctx(t))

	// The admin console's SHOW CONFIG, and /metrics.
	var shown strings.Builder
	con, err := connect("pgtoken", admin)
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	res, err := con.Exec(ctx(t), "SHOW CONFIG").ReadAll()
	if err != nil {
		t.Fatalf("SHOW CONFIG: %v", err)
	}
	for _, row := range flatten(res) {
		shown.WriteString(strings.Join(row, " ") + "\n")
	}
	_ = con.Close(ctx(t))
	if !strings.Contains(shown.String(), "password=REDACTED") {
		t.Errorf("SHOW CONFIG lacks the redacted upstream:\n%s", shown.String())
	}
	resp, err := http.Get("http://" + a.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// /readyz with the one upstream whose password is wrong: the server's
	// reason, without the password.
	wrongCfg := cfg
	wrongCfg.Listen = "127.0.0.1:0"
	wrongCfg.Upstream, wrongCfg.Databases = cfg.Databases["wrongpw"].Upstream, nil
	wrongApp, err := app.Start(context.Background(), wrongCfg, log)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.Get("http://" + wrongApp.MetricsAddr() + "/readyz")
	_ = wrongApp.Close()
	if err != nil {
		t.Fatal(err)
	}
	readyz, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(readyz), "password authentication failed") {
		t.Errorf("/readyz: %d %s", resp.StatusCode, readyz)
	}
	// A failed reload logs its error.
	bad := cfg
	bad.Upstream = "host=127.0.0.1 port=abc password = " + quoted
	_ = a.Reload(bad)
	_ = a.Close()

	logs := logBuf.String()
	if !strings.Contains(logs, "authentication failed") || !strings.Contains(logs, "could not") {
		t.Fatalf("the log does not show the failures:\n%s", logs)
	}
	secrets := map[string]string{"JWT secret": secret, "wrong upstream password": wrongPass}
	for i, w := range strings.Fields(upPass) {
		secrets[fmt.Sprintf("upstream password word %d", i)] = w
	}
	for i, tok := range tokens {
		parts := strings.Split(tok, ".")
		secrets[fmt.Sprintf("token %d", i)] = tok
		if len(parts) == 3 && len(parts[2]) > 8 {
			secrets[fmt.Sprintf("token %d signature", i)] = parts[2]
		}
	}
	for where, text := range map[string]string{
		"log":           logs,
		"client errors": strings.Join(clientMsgs, "\n"),
		"SHOW CONFIG":   shown.String(),
		"/metrics":      string(metrics),
		"/readyz":       string(readyz),
	} {
		for what, s := range secrets {
			if strings.Contains(text, s) {
				i := strings.Index(text, s)
				t.Errorf("the %s shows the %s: …%s…", where, what, text[max(0, i-200):min(len(text), i+len(s)+50)])
			}
		}
	}
	if len(clientMsgs) < 10 {
		t.Fatalf("only %d client errors were seen", len(clientMsgs))
	}
}
