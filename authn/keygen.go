package authn

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// GenerateJWKS creates a signing key for alg (HS256/384/512, RS256/384/512,
// PS256/384/512, ES256/384/512 or EdDSA) and returns two JWKS documents
// with that one key: private (for Mint) and public (for Config.JWKS). The
// key has a random base64url kid, "alg" and "use":"sig". RSA keys are 2048
// bits. For HS* the key is a random oct secret (32, 48 or 64 bytes) and
// public is nil: a shared secret has no public half, and the private
// document is what Config.JWKS takes (keep it as confidential there).
func GenerateJWKS(alg string) (private []byte, public []byte, err error) {
	var priv, pub any
	switch alg {
	case "HS256", "HS384", "HS512":
		secret := make([]byte, hmacKeyBytes(alg))
		rand.Read(secret)
		priv, pub = secret, nil
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, nil, fmt.Errorf("generate RSA key: %w", err)
		}
		priv, pub = k, &k.PublicKey
	case "ES256", "ES384", "ES512":
		k, err := ecdsa.GenerateKey(curveFor(alg), rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("generate ECDSA key: %w", err)
		}
		priv, pub = k, &k.PublicKey
	case "EdDSA":
		p, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("generate Ed25519 key: %w", err)
		}
		priv, pub = k, p
	default:
		return nil, nil, fmt.Errorf("unsupported algorithm %q (supported: %s)", alg, strings.Join(supportedAlgs[:], ", "))
	}
	kidBytes := make([]byte, 16)
	rand.Read(kidBytes)
	meta := jwkset.JWKMetadataOptions{
		ALG: jwkset.ALG(alg),
		KID: base64.RawURLEncoding.EncodeToString(kidBytes),
		USE: jwkset.UseSig,
	}
	private, err = marshalJWKS(priv, jwkset.JWKOptions{Metadata: meta, Marshal: jwkset.JWKMarshalOptions{Private: true}})
	if err != nil {
		return nil, nil, err
	}
	if pub == nil {
		return private, nil, nil
	}
	public, err = marshalJWKS(pub, jwkset.JWKOptions{Metadata: meta})
	if err != nil {
		return nil, nil, err
	}
	return private, public, nil
}

func hmacKeyBytes(alg string) int {
	switch alg {
	case "HS384":
		return 48
	case "HS512":
		return 64
	}
	return 32
}

func curveFor(alg string) elliptic.Curve {
	switch alg {
	case "ES384":
		return elliptic.P384()
	case "ES512":
		return elliptic.P521()
	}
	return elliptic.P256()
}

func marshalJWKS(key any, opts jwkset.JWKOptions) ([]byte, error) {
	j, err := jwkset.NewJWKFromKey(key, opts)
	if err != nil {
		return nil, fmt.Errorf("encode JWK: %w", err)
	}
	out, err := json.MarshalIndent(jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{j.Marshal()}}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode JWKS: %w", err)
	}
	return append(out, '\n'), nil
}

// Mint signs claims with the first key of a private JWKS (as written by
// GenerateJWKS), using the key's "alg" (inferred from the key type if
// absent) and putting its kid in the header. It sets iat to now unless
// claims has one, and exp to now+ttl unless claims has one or ttl is 0.
// claims is not modified. A zero now means time.Now().
func Mint(privateJWKS []byte, claims map[string]any, ttl time.Duration, now time.Time) (string, error) {
	if ttl < 0 {
		return "", errors.New("mint: ttl must not be negative")
	}
	if now.IsZero() {
		now = time.Now()
	}
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(privateJWKS, &set); err != nil {
		return "", fmt.Errorf("mint: key file is not a JWKS document: %w", err)
	}
	if len(set.Keys) == 0 {
		return "", errors.New("mint: the JWKS holds no key")
	}
	j, err := jwkset.NewJWKFromMarshal(set.Keys[0], jwkset.JWKMarshalOptions{Private: true}, jwkset.JWKValidateOptions{})
	if err != nil {
		return "", fmt.Errorf("mint: %w", err)
	}
	m := j.Marshal()
	if m.USE != "" && m.USE != jwkset.UseSig {
		return "", fmt.Errorf("mint: key %q is for use %q, not sig", m.KID, m.USE)
	}
	key := j.Key()
	switch key.(type) {
	case []byte, *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
	default:
		return "", fmt.Errorf("mint: key %q has no private part; use the private JWKS", m.KID)
	}
	alg := string(m.ALG)
	if alg == "" {
		alg = defaultAlgFor(key)
	}
	if !isSupportedAlg(alg) || !keyAccepts(publicOf(key), alg) {
		return "", fmt.Errorf("mint: key %q cannot sign %q", m.KID, alg)
	}
	c := make(jwt.MapClaims, len(claims)+2)
	maps.Copy(c, claims)
	if _, ok := c["iat"]; !ok {
		c["iat"] = now.Unix()
	}
	if _, ok := c["exp"]; !ok && ttl > 0 {
		c["exp"] = now.Add(ttl).Unix()
	}
	t := jwt.NewWithClaims(jwt.GetSigningMethod(alg), c)
	if m.KID != "" {
		t.Header["kid"] = m.KID
	}
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("mint: %w", err)
	}
	return s, nil
}

func defaultAlgFor(key any) string {
	switch k := key.(type) {
	case []byte:
		return "HS256"
	case *rsa.PrivateKey:
		return "RS256"
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P384():
			return "ES384"
		case elliptic.P521():
			return "ES512"
		}
		return "ES256"
	case ed25519.PrivateKey:
		return "EdDSA"
	}
	return ""
}
