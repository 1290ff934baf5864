package authn

import (
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// An identity provider may set a kid even on tokens signed with a shared
// secret; without any JWKS configured the kid cannot name a key, so the
// secret decides.
func TestKidIgnoredWithoutJWKS(t *testing.T) {
	v := newV(t, Config{Secret: testSecret, AllowedRoles: []string{"web_user"}})
	tok := sign(t, jwt.SigningMethodHS256, []byte(testSecret), map[string]any{"kid": "idp-key-1"}, map[string]any{"role": "web_user"})
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("kid with a secret-only config: %v", err)
	}
	bad := sign(t, jwt.SigningMethodHS256, []byte("another secret, 32 bytes long!!!"), map[string]any{"kid": "idp-key-1"}, map[string]any{"role": "web_user"})
	if _, err := v.Verify(bad); err == nil {
		t.Fatal("wrong secret accepted")
	}
}
