package authn

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// RolePath is a parsed PostgREST-style claim path such as ".role",
// ".realm_access.roles[0]" or `."https://hasura.io/jwt/claims"."x-hasura-default-role"`.
//
// Syntax: one or more segments, the first being a name:
//
//	.name          ASCII letters, digits, '_', '$' and '-'
//	."any text"    quoted name; \" and \\ are the only escapes
//	[N]            array index, N >= 0 (decimal)
type RolePath struct {
	segs []pathSeg
}

type pathSeg struct {
	name  string
	index int // valid when isIndex
	isIdx bool
}

// ParseRolePath parses a claim path. The empty string is an error.
func ParseRolePath(s string) (RolePath, error) {
	if s == "" {
		return RolePath{}, errors.New("role claim path is empty")
	}
	var segs []pathSeg
	for i := 0; i < len(s); {
		switch s[i] {
		case '.':
			i++
			if i < len(s) && s[i] == '"' {
				name, n, err := parseQuoted(s[i:])
				if err != nil {
					return RolePath{}, fmt.Errorf("role claim path %q: %w", s, err)
				}
				segs = append(segs, pathSeg{name: name})
				i += n
				continue
			}
			j := i
			for j < len(s) && isPlainNameByte(s[j]) {
				j++
			}
			if j == i {
				return RolePath{}, fmt.Errorf("role claim path %q: expected a name after '.' at offset %d", s, i)
			}
			segs = append(segs, pathSeg{name: s[i:j]})
			i = j
		case '[':
			if len(segs) == 0 {
				return RolePath{}, fmt.Errorf("role claim path %q: must start with a name, not an index", s)
			}
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return RolePath{}, fmt.Errorf("role claim path %q: unterminated '['", s)
			}
			digits := s[i+1 : i+end]
			if digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
				return RolePath{}, fmt.Errorf("role claim path %q: array index must be a non-negative integer", s)
			}
			n, err := strconv.ParseInt(digits, 10, 32)
			if err != nil || n > math.MaxInt32 {
				return RolePath{}, fmt.Errorf("role claim path %q: array index is too large", s)
			}
			segs = append(segs, pathSeg{index: int(n), isIdx: true})
			i += end + 1
		default:
			return RolePath{}, fmt.Errorf("role claim path %q: unexpected %q at offset %d (segments start with '.' or '[')", s, s[i], i)
		}
	}
	return RolePath{segs: segs}, nil
}

// parseQuoted parses a quoted name at the start of s (which begins with '"')
// and returns it with the number of bytes consumed.
func parseQuoted(s string) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), i + 1, nil
		case '\\':
			if i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
				b.WriteByte(s[i+1])
				i++
				continue
			}
			return "", 0, errors.New(`only \" and \\ escapes are allowed in a quoted name`)
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, errors.New("unterminated quoted name")
}

func isPlainNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '$' || c == '-'
}

// first returns the top-level claim name the path starts with.
func (p RolePath) first() string {
	if len(p.segs) == 0 {
		return ""
	}
	return p.segs[0].name
}

// Lookup follows the path through decoded JSON claims (objects as
// map[string]any, arrays as []any). It reports false when any step is
// missing or of the wrong type. A JSON null found at the end is returned
// as (nil, true).
func (p RolePath) Lookup(claims map[string]any) (any, bool) {
	if len(p.segs) == 0 || claims == nil {
		return nil, false
	}
	var cur any = claims
	for _, seg := range p.segs {
		if seg.isIdx {
			arr, ok := cur.([]any)
			if !ok || seg.index >= len(arr) {
				return nil, false
			}
			cur = arr[seg.index]
			continue
		}
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		cur, ok = obj[seg.name]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

// String returns the path in canonical syntax; ParseRolePath accepts it and
// yields an equal path.
func (p RolePath) String() string {
	var b strings.Builder
	for _, seg := range p.segs {
		if seg.isIdx {
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(seg.index))
			b.WriteByte(']')
			continue
		}
		b.WriteByte('.')
		if isPlainName(seg.name) {
			b.WriteString(seg.name)
			continue
		}
		b.WriteByte('"')
		for i := 0; i < len(seg.name); i++ {
			if c := seg.name[i]; c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(seg.name[i])
		}
		b.WriteByte('"')
	}
	return b.String()
}

func isPlainName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isPlainNameByte(s[i]) {
			return false
		}
	}
	return true
}
