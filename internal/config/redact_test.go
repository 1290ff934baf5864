package config

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// Passwords in every DSN spelling pgconn accepts are redacted, in the
// redacted DSN and in parse errors.
func TestRedactDSNForms(t *testing.T) {
	for _, tc := range []struct{ dsn, secret, want string }{
		{"host=x password=hunter2 dbname=y", "hunter2", "host=x password=REDACTED dbname=y"},
		{"host=x password='two words' dbname=y", "words", "host=x password=REDACTED dbname=y"},
		{"host=x password = 'sp ace' dbname=y", "ace", "host=x password=REDACTED dbname=y"},
		{"host=x password= plain dbname=y", "plain", "host=x password=REDACTED dbname=y"},
		{`host=x password='it\'s quoted' dbname=y`, "quoted", "host=x password=REDACTED dbname=y"},
		{`host=x password=back\ slash dbname=y`, "slash", "host=x password=REDACTED dbname=y"},
		{"host=x sslpassword=keypass dbname=y", "keypass", "host=x sslpassword=REDACTED dbname=y"},
		{"host=x application_name='my app' dbname=y", "", "host=x application_name='my app' dbname=y"},
		{"postgres://u:urlpass@h/db?sslmode=disable", "urlpass", "postgres://u:REDACTED@h/db?sslmode=disable"},
		{"postgres://u@h/db?password=qpass&sslpassword=kpass", "kpass", "postgres://u@h/db?password=REDACTED&sslpassword=REDACTED"},
		{"host=x password='unterminated", "unterminated", "(connection string not shown)"},
	} {
		got := RedactDSN(tc.dsn)
		if tc.secret != "" && strings.Contains(got, tc.secret) || tc.want != "" && got != tc.want {
			t.Errorf("RedactDSN(%q) = %q, want %q", tc.dsn, got, tc.want)
		}
		if _, err := pgconn.ParseConfig(tc.dsn); err == nil && tc.want != "" && tc.want[0] != '(' {
			// The redacted form still parses (for SHOW CONFIG users to copy).
			if _, err := pgconn.ParseConfig(got); err != nil {
				t.Errorf("RedactDSN(%q) = %q does not parse: %v", tc.dsn, got, err)
			}
		}
	}
}

func TestDSNParseErrorsHidePasswords(t *testing.T) {
	for _, dsn := range []string{
		"host=x password = 'sec ret' port=abc",
		"host=x password=secret port=abc",
		"postgres://u:secret@h:abc/db",
	} {
		cfg := Default()
		cfg.Upstream = dsn
		cfg.JWT.Secret, cfg.JWT.AllowedRoles = "s", StringList{"r"}
		err := cfg.Validate()
		if err == nil || strings.Contains(err.Error(), "sec") || !strings.Contains(err.Error(), "upstream") {
			t.Errorf("%q: %v", dsn, err)
		}
	}
}
