package authn

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// How claims become settings (docs/CONFIG.md, "How claim names become
// settings", says the same for users):
//
//  1. Namespaces (Config.ClaimsNamespaces). A top-level claim whose name is
//     listed and whose value is a JSON object (or a JSON string holding
//     one, Hasura's stringified_json) is replaced by its members. A listed
//     name that is a proper prefix of a top-level claim's name is stripped
//     from it. Where several namespaces apply, the first listed does.
//  2. Names. Every character outside [A-Za-z0-9_] becomes '_'. A result
//     that is empty, starts with a digit or is longer than 63 bytes cannot
//     be a part of a custom setting name (Postgres refuses the first two;
//     SET truncates a longer identifier to 63 bytes while set_config keeps
//     it whole, so the two preludes would set different names).
//  3. Collisions. Postgres compares setting names ignoring case, so claims
//     whose mapped names are equal ignoring case would set one setting. One
//     of them does: a top-level claim under its own name before one lifted
//     or stripped by a namespace (an earlier listed namespace before a later
//     one); then a claim whose name needed no character replaced; then the
//     name that sorts first byte by byte.
//
// Claims that get no setting are reported by name (never by value) so that
// the Verifier can log them. claims.json is built from the token as it is.

// maxSettingPart is the longest setting name part both prelude forms agree
// on: Postgres's lexer truncates identifiers to NAMEDATALEN-1 bytes.
const maxSettingPart = 63

// settingPart maps a claim name to the part of the setting name it becomes:
// every character outside [A-Za-z0-9_] becomes '_'. ok is false when the
// result cannot be such a part: empty, starting with a digit, or longer than
// maxSettingPart bytes.
func settingPart(name string) (part string, ok bool) {
	clean := true
	for i := 0; i < len(name); i++ {
		if !isPartByte(name[i]) {
			clean = false
			break
		}
	}
	part = name
	if !clean {
		var b strings.Builder
		b.Grow(len(name))
		for _, r := range name { // a character, not a byte, becomes one '_'
			if r < utf8.RuneSelf && isPartByte(byte(r)) {
				b.WriteRune(r)
			} else {
				b.WriteByte('_')
			}
		}
		part = b.String()
	}
	if part == "" || len(part) > maxSettingPart || part[0] >= '0' && part[0] <= '9' {
		return part, false
	}
	return part, true
}

func isPartByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// namedClaim is one claim after the namespaces are applied.
type namedClaim struct {
	name   string // the name after lifting or stripping
	raw    json.RawMessage
	ns     string // for a lifted member: the name of the object it came from
	orig   string // the name the token gives it (in ns, for a lifted member)
	origin int    // 0: a top-level claim under its own name; n: lifted or stripped by the n-th namespace
}

// path is where the token holds the claim, in role_claim syntax, for logs:
// .sub, ."https://hasura.io/jwt/claims"."x-hasura-user-id".
func (c *namedClaim) path() string {
	segs := []pathSeg{{name: c.orig}}
	if c.ns != "" {
		segs = []pathSeg{{name: c.ns}, {name: c.orig}}
	}
	return RolePath{segs: segs}.String()
}

// applyNamespaces returns the claims of members (sorted by name, as a
// claimSet holds them) with the namespaces applied, in a deterministic
// order. A namespace object that names a member twice makes the token
// malformed, as a top-level claim named twice does.
func applyNamespaces(members []member, namespaces []string) ([]namedClaim, *Error) {
	out := make([]namedClaim, 0, len(members))
next:
	for _, m := range members {
		for i, ns := range namespaces {
			if m.name != ns {
				continue
			}
			inner, ok, err := liftable(m.name, m.raw)
			if err != nil {
				return nil, err
			}
			if !ok {
				break // not an object: maybe a prefix applies, else kept
			}
			for _, im := range inner {
				out = append(out, namedClaim{name: im.name, raw: im.raw, ns: m.name, orig: im.name, origin: i + 1})
			}
			continue next
		}
		for i, ns := range namespaces {
			if len(m.name) > len(ns) && strings.HasPrefix(m.name, ns) {
				out = append(out, namedClaim{name: m.name[len(ns):], raw: m.raw, orig: m.name, origin: i + 1})
				continue next
			}
		}
		out = append(out, namedClaim{name: m.name, raw: m.raw, orig: m.name})
	}
	return out, nil
}

// liftable returns the members of the namespace claim name's value: a JSON
// object, or a JSON string holding one. ok is false for any other value.
func liftable(name string, raw json.RawMessage) (members []member, ok bool, _ *Error) {
	b := []byte(raw)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if json.Unmarshal(b, &s) != nil {
			return nil, false, nil
		}
		b = bytes.TrimSpace([]byte(s))
		if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
			return nil, false, nil
		}
		if hasEscapedNUL(b) {
			return nil, false, malformed("token claims contain a NUL character")
		}
	}
	members, dup, err := decodeObject(b)
	switch {
	case err != nil:
		return nil, false, nil
	case dup != "":
		return nil, false, malformed(fmt.Sprintf("token claim %q holds %q more than once", clip(name), clip(dup)))
	}
	return members, true, nil
}

// errNotObject is decodeObject's error for JSON text that is not an object.
var errNotObject = errors.New("not a JSON object")

// decodeObject reads the members of the JSON object b, sorted by name, each
// value kept as raw JSON. dup names a member that appears more than once.
func decodeObject(b []byte) (members []member, dup string, err error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, "", err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, "", errNotObject
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, "", err
		}
		name, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, "", err
		}
		members = append(members, member{name: name, raw: raw})
	}
	sort.Slice(members, func(i, j int) bool { return members[i].name < members[j].name })
	for i := 1; i < len(members); i++ {
		if members[i].name == members[i-1].name {
			return nil, members[i].name, nil
		}
	}
	return members, "", nil
}

// lookupNamed returns the raw value of the claim named name after the
// namespaces (origin > 0; top-level claims are looked up first by the
// caller), choosing as a collision does.
func lookupNamed(named []namedClaim, name string) (json.RawMessage, bool) {
	var best *namedClaim
	for i := range named {
		c := &named[i]
		if c.origin == 0 || c.name != name {
			continue
		}
		if best == nil || c.origin < best.origin || c.origin == best.origin && c.path() < best.path() {
			best = c
		}
	}
	if best == nil {
		return nil, false
	}
	return best.raw, true
}

// claimIssues names the claims that got no setting, by name only.
type claimIssues struct {
	unmappable []string // paths of claims whose name cannot become a setting name
	shadowed   []string // "<path> (<setting> is set from <path>)"
}

func (i *claimIssues) empty() bool { return len(i.unmappable) == 0 && len(i.shadowed) == 0 }

// key identifies the issues for logging them once.
func (i *claimIssues) key() string {
	return strings.Join(i.unmappable, "\x00") + "\x01" + strings.Join(i.shadowed, "\x00")
}

// claimSettings maps named claims to settings <prefix>.<part>, sorted by
// name ignoring case, and reports the claims left out.
func claimSettings(named []namedClaim, prefix string) ([]Setting, claimIssues) {
	type cand struct {
		c        *namedClaim
		part     string
		key      string // part in lower case: what Postgres compares
		replaced bool
	}
	var issues claimIssues
	cands := make([]cand, 0, len(named))
	for i := range named {
		c := &named[i]
		part, ok := settingPart(c.name)
		if !ok {
			issues.unmappable = append(issues.unmappable, c.path())
			continue
		}
		cands = append(cands, cand{c: c, part: part, key: strings.ToLower(part), replaced: part != c.name})
	}
	sort.SliceStable(cands, func(i, j int) bool {
		a, b := &cands[i], &cands[j]
		switch {
		case a.key != b.key:
			return a.key < b.key
		case a.c.origin != b.c.origin:
			return a.c.origin < b.c.origin
		case a.replaced != b.replaced:
			return !a.replaced
		case a.c.name != b.c.name:
			return a.c.name < b.c.name
		}
		return a.c.path() < b.c.path()
	})
	out := make([]Setting, 0, len(cands))
	for i := 0; i < len(cands); i++ {
		win := &cands[i]
		name := prefix + "." + win.part
		out = append(out, Setting{Name: name, Value: settingValue(win.c.raw)})
		for i+1 < len(cands) && cands[i+1].key == win.key {
			i++
			issues.shadowed = append(issues.shadowed, fmt.Sprintf("%s (%s is set from %s)", clip(cands[i].c.path()), name, clip(win.c.path())))
		}
	}
	for i, p := range issues.unmappable {
		issues.unmappable[i] = clip(p)
	}
	return out, issues
}
