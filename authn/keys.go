package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"hash"
	"os"
	"slices"

	"github.com/MicahParks/jwkset"
)

// supportedAlgs are the JWS algorithms Verify can check, in a fixed order.
var supportedAlgs = [...]string{
	"HS256", "HS384", "HS512",
	"RS256", "RS384", "RS512",
	"PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512",
	"EdDSA",
}

func isSupportedAlg(alg string) bool {
	return slices.Contains(supportedAlgs[:], alg)
}

// vkey is one verification key: []byte (HMAC), *rsa.PublicKey,
// *ecdsa.PublicKey or ed25519.PublicKey.
type vkey struct {
	kid string // "" if none
	alg string // the JWK "alg", "" if not stated
	key any
}

// accepts reports whether a token signed with alg may be checked against k:
// HMAC only with []byte keys, RSA algorithms only with RSA keys, ESxxx only
// with a key on the matching curve, EdDSA only with Ed25519; and the JWK's
// own "alg", when stated, must equal alg.
func (k *vkey) accepts(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	return keyAccepts(k.key, alg)
}

func keyAccepts(key any, alg string) bool {
	switch k := key.(type) {
	case []byte:
		return alg == "HS256" || alg == "HS384" || alg == "HS512"
	case *rsa.PublicKey:
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return true
		}
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return k.Curve == elliptic.P256()
		case "ES384":
			return k.Curve == elliptic.P384()
		case "ES512":
			return k.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// usable reports whether k can check any supported algorithm.
func (k *vkey) usable() bool {
	for _, alg := range supportedAlgs {
		if k.accepts(alg) {
			return true
		}
	}
	return false
}

// publicOf returns the public half of a private key, or key itself.
func publicOf(key any) any {
	switch k := key.(type) {
	case []byte:
		return k
	case interface{ Public() crypto.PublicKey }:
		return k.Public()
	}
	return key
}

// keySnapshot is an immutable, indexed set of keys from JWKS documents.
type keySnapshot struct {
	byKID       map[string]*vkey
	byAlg       map[string][]*vkey
	n           int
	fingerprint [sha256.Size]byte
}

// newSnapshot indexes the JWKs of one JWKS document.
func newSnapshot(jwks []jwkset.JWK) *keySnapshot {
	b := newSnapshotBuilder()
	b.addJWKs(jwks)
	return b.done()
}

type snapshotBuilder struct {
	s *keySnapshot
	h hash.Hash
}

func newSnapshotBuilder() *snapshotBuilder {
	return &snapshotBuilder{
		s: &keySnapshot{byKID: map[string]*vkey{}, byAlg: map[string][]*vkey{}},
		h: sha256.New(),
	}
}

// addJWKs keeps only signature keys Verify can use: "use" absent or "sig",
// "key_ops" absent or containing "verify", and a key type matching some
// supported algorithm. The first key with a given kid wins.
func (b *snapshotBuilder) addJWKs(jwks []jwkset.JWK) {
	for _, j := range jwks {
		m := j.Marshal()
		if m.USE != "" && m.USE != jwkset.UseSig {
			continue
		}
		if len(m.KEYOPS) > 0 && !slices.Contains(m.KEYOPS, jwkset.KeyOpsVerify) {
			continue
		}
		k := &vkey{kid: m.KID, alg: string(m.ALG), key: publicOf(j.Key())}
		if !k.usable() {
			continue
		}
		b.s.add(k)
		fmt.Fprintf(b.h, "%q %q %q %q %q %q %q %q %q\n", m.KID, m.ALG, m.KTY, m.CRV, m.N, m.E, m.X, m.Y, m.K)
	}
}

func (b *snapshotBuilder) done() *keySnapshot {
	b.h.Sum(b.s.fingerprint[:0])
	return b.s
}

func (s *keySnapshot) add(k *vkey) {
	s.n++
	if k.kid != "" {
		if _, dup := s.byKID[k.kid]; !dup {
			s.byKID[k.kid] = k
		}
	}
	for _, alg := range supportedAlgs {
		if k.accepts(alg) {
			s.byAlg[alg] = append(s.byAlg[alg], k)
		}
	}
}

// loadPEMFile reads public keys from a PEM file: "PUBLIC KEY" (PKIX: RSA,
// ECDSA P-256/384/521, Ed25519), "RSA PUBLIC KEY" (PKCS#1) or "CERTIFICATE"
// blocks. Private keys are refused so that they are not deployed here.
func loadPEMFile(path string) ([]*vkey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("public key file: %w", err)
	}
	var keys []*vkey
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var pub any
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY":
			return nil, fmt.Errorf("public key file %s: PEM block %d is a private key; configure the public key instead", path, n)
		default:
			return nil, fmt.Errorf("public key file %s: PEM block %d has unsupported type %q", path, n, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("public key file %s: PEM block %d: %w", path, n, err)
		}
		k := &vkey{key: pub}
		if !k.usable() {
			return nil, fmt.Errorf("public key file %s: PEM block %d holds an unsupported key type %s", path, n, keyTypeName(pub))
		}
		if rk, ok := pub.(*rsa.PublicKey); ok && rk.N.BitLen() < 1024 {
			return nil, fmt.Errorf("public key file %s: PEM block %d: RSA key of %d bits is too small", path, n, rk.N.BitLen())
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("public key file %s: no PEM public key found", path)
	}
	return keys, nil
}

func keyTypeName(key any) string {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	default:
		return fmt.Sprintf("%T", key)
	}
}

// staticKeys are the keys from Secret, PEM files and file:// JWKS. Reload
// replaces them as a whole.
type staticKeys struct {
	kidless map[string][]any // alg → Secret and PEM keys that accept it
	n       int              // number of Secret and PEM keys
	jwks    *keySnapshot     // keys from file:// JWKS documents
}

func loadStatic(secret string, pemPaths []string, files []jwksFile) (*staticKeys, error) {
	var kidless []*vkey
	if secret != "" {
		kidless = append(kidless, &vkey{key: []byte(secret)})
	}
	for _, p := range pemPaths {
		keys, err := loadPEMFile(p)
		if err != nil {
			return nil, err
		}
		kidless = append(kidless, keys...)
	}
	st := &staticKeys{kidless: map[string][]any{}, n: len(kidless)}
	for _, k := range kidless {
		for _, alg := range supportedAlgs {
			if k.accepts(alg) {
				st.kidless[alg] = append(st.kidless[alg], k.key)
			}
		}
	}
	b := newSnapshotBuilder()
	for _, f := range files {
		jwks, err := readJWKSFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("JWKS %s: %w", f.url, err)
		}
		before := b.s.n
		b.addJWKs(jwks)
		if b.s.n == before {
			return nil, fmt.Errorf("JWKS %s: no usable signature verification key", f.url)
		}
	}
	st.jwks = b.done()
	return st, nil
}

// keyByKID finds a key by kid among the keys of file:// JWKS and jwt.jwks
// URLs (those of jwt.jwks_issuers serve their own issuer only).
func (v *Verifier) keyByKID(kid string) *vkey {
	if k := v.static.Load().jwks.byKID[kid]; k != nil {
		return k
	}
	if v.jwks != nil {
		return v.jwks.keyByKID(kid)
	}
	return nil
}

// soleKey finds the one JWKS key that accepts alg across the snapshots
// added to it; a token without a kid is checked with a JWKS key only when
// exactly one fits.
type soleKey struct {
	alg  string
	n    int
	only *vkey
}

func (c *soleKey) add(s *keySnapshot) {
	if s == nil {
		return
	}
	l := s.byAlg[c.alg]
	c.n += len(l)
	if len(l) == 1 {
		c.only = l[0]
	}
}

func (c *soleKey) key() *vkey {
	if c.n != 1 {
		return nil
	}
	return c.only
}

// kidlessKeys returns the keys to try for a token without a kid: Secret
// and PEM keys of the right type, plus the JWKS key of that type if
// exactly one exists.
func (v *Verifier) kidlessKeys(alg string) []any {
	st := v.static.Load()
	keys := st.kidless[alg]
	c := soleKey{alg: alg}
	c.add(st.jwks)
	v.jwks.snapshots(c.add)
	if k := c.key(); k != nil {
		keys = append(slices.Clip(keys), k.key)
	}
	return keys
}

// kidlessKey is the group's one key for alg, for a token without a kid.
func (g *jwksGroup) kidlessKey(alg string) *vkey {
	c := soleKey{alg: alg}
	g.snapshots(c.add)
	return c.key()
}

// httpSnapshots calls fn with the keys of every HTTP JWKS fetched so far:
// jwt.jwks and every issuer's.
func (v *Verifier) httpSnapshots(fn func(*keySnapshot)) {
	v.jwks.snapshots(fn)
	for _, g := range v.issuers {
		g.snapshots(fn)
	}
}

// currentAlgs is the allowlist: Config.Algorithms, or else every algorithm
// some loaded key accepts.
func (v *Verifier) currentAlgs() []string {
	if v.explicitAlgs != nil {
		return v.explicitAlgs
	}
	return v.currentKeyAlgs()
}

// currentKeyAlgs lists the algorithms some loaded key accepts.
func (v *Verifier) currentKeyAlgs() []string {
	st := v.static.Load()
	out := []string{}
	for _, alg := range supportedAlgs {
		ok := len(st.kidless[alg]) > 0 || len(st.jwks.byAlg[alg]) > 0
		v.httpSnapshots(func(s *keySnapshot) { ok = ok || len(s.byAlg[alg]) > 0 })
		if ok {
			out = append(out, alg)
		}
	}
	return out
}

// KeyCount returns the number of usable verification keys (Secret counts
// as one).
func (v *Verifier) KeyCount() int {
	st := v.static.Load()
	n := st.n + st.jwks.n
	v.httpSnapshots(func(s *keySnapshot) { n += s.n })
	return n
}
