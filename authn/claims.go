package authn

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// member is one top-level claim: its name and its raw JSON value.
type member struct {
	name string
	raw  json.RawMessage
}

// claimSet is the jwt.Claims implementation Verify parses into. It keeps
// every top-level claim as raw JSON (so number text and nested key order are
// preserved) and decodes only the registered claims golang-jwt validates.
type claimSet struct {
	wantJSON bool // compute compact for ClaimsJSON

	decoded bool
	members []member // sorted by name, names unique
	compact []byte   // compact JSON of the whole payload, if wantJSON

	exp, nbf, iat *jwt.NumericDate
	iss           string
	aud           jwt.ClaimStrings
}

var _ jwt.Claims = (*claimSet)(nil)

func (c *claimSet) GetExpirationTime() (*jwt.NumericDate, error) { return c.exp, nil }
func (c *claimSet) GetNotBefore() (*jwt.NumericDate, error)      { return c.nbf, nil }
func (c *claimSet) GetIssuedAt() (*jwt.NumericDate, error)       { return c.iat, nil }
func (c *claimSet) GetIssuer() (string, error)                   { return c.iss, nil }
func (c *claimSet) GetSubject() (string, error)                  { return c.stringClaim("sub"), nil }
func (c *claimSet) GetAudience() (jwt.ClaimStrings, error)       { return c.aud, nil }

func malformed(detail string) *Error { return reject(ReasonMalformed, detail, nil) }

// UnmarshalJSON is called by golang-jwt with the decoded payload segment.
func (c *claimSet) UnmarshalJSON(b []byte) error {
	if !utf8.Valid(b) {
		return malformed("token claims are not valid UTF-8")
	}
	if hasEscapedNUL(b) {
		return malformed("token claims contain a NUL character")
	}
	members, dup, err := decodeObject(b)
	switch {
	case errors.Is(err, errNotObject):
		return malformed("token claims are not a JSON object")
	case err != nil:
		return reject(ReasonMalformed, "token claims are not valid JSON", err)
	case dup != "":
		return malformed(fmt.Sprintf("token claim %q appears more than once", clip(dup)))
	}
	c.members = members

	if c.exp, err = c.numericDate("exp"); err != nil {
		return err
	}
	if c.nbf, err = c.numericDate("nbf"); err != nil {
		return err
	}
	if c.iat, err = c.numericDate("iat"); err != nil {
		return err
	}
	if raw := c.raw("iss"); raw != nil {
		if err := json.Unmarshal(raw, &c.iss); err != nil {
			return reject(ReasonMalformed, "token claim iss is not a string", err)
		}
	}
	if raw := c.raw("aud"); raw != nil {
		if err := json.Unmarshal(raw, &c.aud); err != nil {
			return reject(ReasonMalformed, "token claim aud is not a string or an array of strings", err)
		}
	}
	if c.wantJSON {
		var buf bytes.Buffer
		buf.Grow(len(b))
		if err := json.Compact(&buf, b); err != nil {
			return reject(ReasonMalformed, "token claims are not valid JSON", err)
		}
		c.compact = buf.Bytes()
	}
	c.decoded = true
	return nil
}

// raw returns the raw value of a top-level claim, or nil if it is absent or
// JSON null.
func (c *claimSet) raw(name string) json.RawMessage {
	i := sort.Search(len(c.members), func(i int) bool { return c.members[i].name >= name })
	if i < len(c.members) && c.members[i].name == name {
		if string(c.members[i].raw) == "null" {
			return nil
		}
		return c.members[i].raw
	}
	return nil
}

// lookup is like raw but keeps JSON null.
func (c *claimSet) lookup(name string) (json.RawMessage, bool) {
	i := sort.Search(len(c.members), func(i int) bool { return c.members[i].name >= name })
	if i < len(c.members) && c.members[i].name == name {
		return c.members[i].raw, true
	}
	return nil, false
}

func (c *claimSet) numericDate(name string) (*jwt.NumericDate, error) {
	raw := c.raw(name)
	if raw == nil {
		return nil, nil
	}
	var d *jwt.NumericDate
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, reject(ReasonMalformed, fmt.Sprintf("token claim %s is not a number", name), err)
	}
	return d, nil
}

// stringClaim renders a claim for logs: a JSON string as itself, any other
// value as compact JSON text, "" if absent or null.
func (c *claimSet) stringClaim(name string) string {
	raw := c.raw(name)
	if raw == nil {
		return ""
	}
	return settingValue(raw)
}

// settingValue is a JSON string's value, or the compact JSON text of any
// other value.
func settingValue(raw json.RawMessage) string {
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err == nil {
			return s
		}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	return buf.String()
}

// IsSettingIdent reports whether s matches ^[A-Za-z_][A-Za-z0-9_$]*$: an
// ASCII identifier, as Postgres requires of each part of a custom setting's
// name and pgtoken of each claim name it turns into a setting.
func IsSettingIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '$'):
		default:
			return false
		}
	}
	return true
}

// ValidSettingName reports whether s is a dotted identifier path such as
// "jwt.claims" (each part matching IsSettingIdent).
func ValidSettingName(s string) bool {
	if s == "" {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if !IsSettingIdent(part) {
			return false
		}
	}
	return true
}

// hasEscapedNUL reports whether valid JSON text b contains a string with a
// NUL character. Valid JSON cannot hold a raw NUL byte, only the escape
// \u0000, so it is enough to walk the escapes.
func hasEscapedNUL(b []byte) bool {
	for {
		i := bytes.IndexByte(b, '\\')
		if i < 0 || i+1 >= len(b) {
			return false
		}
		if b[i+1] == 'u' {
			if i+6 <= len(b) && string(b[i+2:i+6]) == "0000" {
				return true
			}
			b = b[i+2:]
			continue
		}
		b = b[i+2:] // skip the escaped character, e.g. the second '\' of "\\"
	}
}

// expiry returns the exp claim as a time, zero if absent.
func (c *claimSet) expiry() time.Time {
	if c.exp == nil {
		return time.Time{}
	}
	return c.exp.Time
}
