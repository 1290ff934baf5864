package session_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtoken/pgtoken/authn"
	"github.com/pgtoken/pgtoken/internal/config"
	"github.com/pgtoken/pgtoken/internal/pgtest"
)

// keyPair generates a JWKS key pair for alg into dir and returns the
// private JWKS and the public JWKS path.
func keyPair(t *testing.T, dir, alg string) ([]byte, string) {
	t.Helper()
	priv, pub, err := authn.GenerateJWKS(alg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, alg+".jwks.json")
	if err := os.WriteFile(p, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, p
}

func TestTokensFromEveryKeySource(t *testing.T) {
	dir := t.TempDir()
	rsPriv, rsFile := keyPair(t, dir, "RS256")
	esPriv, _ := keyPair(t, dir, "ES256")
	edPriv, _ := keyPair(t, dir, "EdDSA")
	// The EdDSA key is served over HTTP; the ES256 one as a PEM file.
	pubOf := func(priv []byte) []byte {
		var set struct {
			Keys []map[string]any `json:"keys"`
		}
		if err := json.Unmarshal(priv, &set); err != nil {
			t.Fatal(err)
		}
		for _, k := range set.Keys {
			delete(k, "d")
		}
		b, _ := json.Marshal(set)
		return b
	}
	edPub := pubOf(edPriv)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(edPub)
	}))
	defer srv.Close()
	pemFile := filepath.Join(dir, "es.pem")
	writePublicPEM(t, esPriv, pemFile)

	env := pgtest.Start(t, func(c *config.Config) {
		c.JWT.JWKS = config.StringList{"file://" + rsFile, srv.URL + "/jwks.json"}
		c.JWT.PublicKeys = config.StringList{pemFile}
	})
	claims := func(sub string) map[string]any { return map[string]any{"role": "web_user", "sub": sub} }
	mint := func(priv []byte, sub string) string {
		tok, err := authn.Mint(priv, claims(sub), time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	esNoKid := mintWithoutKid(t, esPriv, claims("es256"))
	for name, tok := range map[string]string{
		"HS256 secret":         pgtest.UserToken(t, "hs256"),
		"RS256 JWKS file":      mint(rsPriv, "rs256"),
		"EdDSA JWKS over HTTP": mint(edPriv, "eddsa"),
		"ES256 PEM file":       esNoKid,
	} {
		c, err := pgconn.Connect(ctx(t), env.DSN(tok))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		got := rows(t, c, whoami)
		if got[0][0] != "web_user" {
			t.Errorf("%s: %q", name, got)
		}
		c.Close(ctx(t))
	}
}

// mintWithoutKid signs like authn.Mint but drops the kid, as a PEM-only
// deployment would see tokens.
func mintWithoutKid(t *testing.T, priv []byte, claims map[string]any) string {
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(priv, &set); err != nil {
		t.Fatal(err)
	}
	delete(set.Keys[0], "kid")
	b, _ := json.Marshal(set)
	tok, err := authn.Mint(b, claims, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// writePublicPEM writes the public half of a private EC JWKS as PEM.
func writePublicPEM(t *testing.T, priv []byte, path string) {
	var set struct {
		Keys []struct {
			X, Y string
		} `json:"keys"`
	}
	if err := json.Unmarshal(priv, &set); err != nil {
		t.Fatal(err)
	}
	x, y := b64bytes(t, set.Keys[0].X), b64bytes(t, set.Keys[0].Y)
	pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pk)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

func b64bytes(t *testing.T, s string) []byte {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// selfSigned writes a certificate and key for 127.0.0.1/localhost.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

func TestTLSForClients(t *testing.T) {
	cert, key := selfSigned(t, t.TempDir())
	env := pgtest.Start(t, func(c *config.Config) {
		c.TLS.Cert, c.TLS.Key = cert, key
	})
	tok := pgtest.UserToken(t, "alice")
	dsn := strings.Replace(env.DSN(tok), "sslmode=disable", "sslmode=verify-full sslrootcert="+cert, 1)
	c, err := pgconn.Connect(ctx(t), dsn)
	if err != nil {
		t.Fatalf("verify-full: %v", err)
	}
	defer c.Close(ctx(t))
	if _, ok := c.Conn().(*tls.Conn); !ok {
		t.Fatalf("not TLS: %T", c.Conn())
	}
	if got := rows(t, c, whoami); got[0][1] != "alice" {
		t.Fatalf("over TLS: %q", got)
	}
	// psql with sslmode=require.
	if _, err := exec.LookPath("psql"); err == nil {
		out, err := psql(t, env, tok, "sslmode=require", "-c", "select current_user, current_setting('jwt.claims.sub')")
		if err != nil || !strings.Contains(out, "web_user|alice") {
			t.Fatalf("psql sslmode=require: %v\n%s", err, out)
		}
	}
}

// psql runs the psql binary against pgtoken with the token as PGPASSWORD.
func psql(t *testing.T, env *pgtest.Env, token, extra string, args ...string) (string, error) {
	t.Helper()
	conn := "host=127.0.0.1 port=" + itoa(env.App.Port()) + " dbname=" + env.DB + " user=anyone " + extra
	cmd := exec.Command("psql", append([]string{"-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", conn}, args...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+token, "PGCONNECT_TIMEOUT=10")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestPsqlWithTheTokenAsPassword(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("psql is required in CI")
		}
		t.Skip("psql not installed")
	}
	env := pgtest.Start(t, nil)
	tok := pgtest.UserToken(t, "alice")
	out, err := psql(t, env, tok, "sslmode=disable", "-c", "select count(*) from todos", "-c", "select current_user")
	if err != nil || pgtest.Lines(out)[0] != "3" || pgtest.Lines(out)[1] != "web_user" {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	out, _ = psql(t, env, tok, "sslmode=disable", "-c", "set role web_admin")
	if !strings.Contains(out, "SET ROLE is not allowed") {
		t.Fatalf("psql set role: %s", out)
	}
	out, err = psql(t, env, "not-a-token", "sslmode=disable", "-c", "select 1")
	if err == nil || !strings.Contains(out, "token rejected (malformed)") {
		t.Fatalf("psql with a bad token: %v\n%s", err, out)
	}
	// Ctrl-C: SIGINT makes psql send a CancelRequest.
	conn := "host=127.0.0.1 port=" + itoa(env.App.Port()) + " dbname=" + env.DB + " user=anyone sslmode=disable"
	cmd := exec.Command("psql", "-X", conn, "-c", "select pg_sleep(30)")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+tok)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGINT)
	_ = cmd.Wait()
	if time.Since(start) > 10*time.Second || !strings.Contains(buf.String(), "canceling statement due to user request") {
		t.Fatalf("psql Ctrl-C after %s: %s", time.Since(start), buf.String())
	}
}

func TestTransactionModeRefusesWhatCannotWork(t *testing.T) {
	env := pgtest.Start(t, nil)
	a := env.Connect(pgtest.UserToken(t, "alice"))
	for _, sql := range []string{
		"listen events",
		"select pg_advisory_lock(1)",
		"begin; declare c cursor with hold for select 1; commit",
		"create temp table t(x int)",
	} {
		_, err := a.Exec(ctx(t), sql).ReadAll()
		pe := pgErr(err)
		if pe == nil || pe.Code != "0A000" || !strings.Contains(pe.Hint, "session") {
			t.Errorf("%s: %v", sql, err)
		}
	}
	// What lives only inside the transaction works.
	env.Superuser("grant temporary on database " + env.DB + " to web_user")
	for _, sql := range []string{
		"begin; create temp table t(x int) on commit drop; insert into t values (1); commit",
		"select pg_advisory_xact_lock(1)",
		"begin; declare c cursor for select 1; fetch c; commit",
		"notify events, 'x'",
	} {
		if _, err := a.Exec(ctx(t), sql).ReadAll(); err != nil {
			t.Errorf("%s: %v", sql, err)
			rows(t, a, "rollback")
		}
	}
}

func TestExpiredTokenEndsTheSessionBetweenTransactions(t *testing.T) {
	env := pgtest.Start(t, nil)
	tok := pgtest.Token(t, map[string]any{"role": "web_user", "sub": "short", "exp": time.Now().Add(2 * time.Second).Unix()})
	c := env.Connect(tok)
	rows(t, c, "begin")
	time.Sleep(2500 * time.Millisecond)
	// A transaction in flight completes.
	if got := rows(t, c, whoami); got[0][1] != "short" {
		t.Fatalf("in flight: %q", got)
	}
	rows(t, c, "commit")
	// The FATAL answers the next query, or comes unasked right after the
	// COMMIT's answer (pgtoken checks the token when the client goes
	// idle), in which case the driver finds its connection closed.
	_, err := c.Exec(ctx(t), whoami).ReadAll()
	if pe := pgErr(err); pe != nil && (pe.Code != "28000" || pe.Severity != "FATAL" || pe.Message != "token expired") || pe == nil && !c.IsClosed() {
		t.Fatalf("after expiry: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		gone := true
		for _, d := range env.App.Server.DebugSessions() {
			if d.Sub == "short" {
				gone = false
			}
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session of the expired token is still there")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTokenPastExpWithinLeewayIsRefusedAtLogin(t *testing.T) {
	env := pgtest.Start(t, nil) // leeway 30s
	tok := pgtest.Token(t, map[string]any{"role": "web_user", "exp": time.Now().Add(-5 * time.Second).Unix()})
	_, err := pgconn.Connect(ctx(t), env.DSN(tok))
	if pe := pgErr(err); pe == nil || pe.Code != "28P01" || !strings.Contains(pe.Message, "expired") {
		t.Fatalf("expired within leeway: %v", err)
	}
}
