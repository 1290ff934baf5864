package authn

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func BenchmarkVerify(b *testing.B) {
	k := keys()
	jwks := writeFile(b, "jwks.json", jwksDoc(b,
		jwkSpec{key: k.rsa1, kid: "rsa"},
		jwkSpec{key: k.ec256, kid: "ec"},
		jwkSpec{key: k.ed, kid: "ed"},
	))
	claims := map[string]any{
		"role": "web_user", "sub": "user-1", "exp": time.Now().Add(time.Hour).Unix(),
		"email": "user@example.com", "org": map[string]any{"id": 42, "name": "acme"},
	}
	toks := []struct {
		name string
		tok  string
	}{
		{"HS256", sign(b, jwt.SigningMethodHS256, []byte(testSecret), nil, claims)},
		{"RS256", sign(b, jwt.SigningMethodRS256, k.rsa1, map[string]any{"kid": "rsa"}, claims)},
		{"ES256", sign(b, jwt.SigningMethodES256, k.ec256, map[string]any{"kid": "ec"}, claims)},
		{"EdDSA", sign(b, jwt.SigningMethodEdDSA, k.ed, map[string]any{"kid": "ed"}, claims)},
	}
	for _, cached := range []bool{false, true} {
		size := -1
		name := "nocache"
		if cached {
			size, name = 0, "cache"
		}
		v := newV(b, Config{Secret: testSecret, JWKS: []string{fileURL(jwks)}, CacheSize: size, ClaimsPrefix: "jwt.claims", ClaimsJSON: "request.jwt.claims"})
		for _, tc := range toks {
			b.Run(tc.name+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := v.Verify(tc.tok); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
