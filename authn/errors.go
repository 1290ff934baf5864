package authn

// Reason classifies why Verify refused a token. Its values are stable and
// suitable as metric labels.
type Reason string

// Reasons returned in Error.Reason.
const (
	ReasonMalformed    Reason = "malformed"
	ReasonBadSignature Reason = "bad signature"
	ReasonUnknownKID   Reason = "unknown key id"
	ReasonAlgorithm    Reason = "algorithm not allowed"
	ReasonExpired      Reason = "expired"
	ReasonNotYetValid  Reason = "not yet valid"
	ReasonIssuer       Reason = "wrong issuer"
	ReasonAudience     Reason = "wrong audience"
	ReasonRole         Reason = "role not allowed"
	ReasonNoRole       Reason = "no role" // no role claim and no AnonRole
)

// Error is returned by Verify when it refuses a token.
//
// Detail, when set, is a complete sentence naming the specific problem (for
// example `token role "admin" is not allowed`); Error returns it, or a
// default sentence for Reason when Detail is empty. Neither ever contains
// the token, a secret or key material. Err is the underlying cause, if any
// (for example jwt.ErrTokenExpired), for use with errors.Is.
type Error struct {
	Reason Reason
	Detail string
	Err    error
}

// Error returns Detail, or a default sentence for Reason.
func (e *Error) Error() string {
	if e.Detail != "" {
		return e.Detail
	}
	switch e.Reason {
	case ReasonMalformed:
		return "token is malformed"
	case ReasonBadSignature:
		return "token signature is invalid"
	case ReasonUnknownKID:
		return "token key id is unknown"
	case ReasonAlgorithm:
		return "token algorithm is not allowed"
	case ReasonExpired:
		return "token expired"
	case ReasonNotYetValid:
		return "token is not valid yet"
	case ReasonIssuer:
		return "token issuer is wrong"
	case ReasonAudience:
		return "token audience is wrong"
	case ReasonRole:
		return "token role is not allowed"
	case ReasonNoRole:
		return "token has no role claim"
	}
	return "token refused: " + string(e.Reason)
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

func reject(r Reason, detail string, err error) *Error {
	return &Error{Reason: r, Detail: detail, Err: err}
}

// clip shortens untrusted text (a kid, an issuer, a role) before it goes
// into an error message, so messages stay short.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !isRuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
