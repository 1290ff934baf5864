// Package authn verifies the JWTs clients give as their Postgres password
// and maps their claims to the role and settings each transaction runs
// with. It also generates keys and mints tokens for the pgtoken CLI.
//
// Keys come from a shared secret, PEM public-key files and JWKS documents
// (file:// or http(s)://, the latter refreshed in the background and on an
// unknown kid), and from <iss>/.well-known/jwks.json for the issuers listed
// in Config.JWKSIssuers, whose tokens those keys alone check. Header
// parameters that point to keys (jku, x5u, jwk) are ignored, and so is an
// iss that is not listed: only configured keys are trusted.
package authn
