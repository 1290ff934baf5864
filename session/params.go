package session

import (
	"strings"

	"github.com/pgtoken/pgtoken/session/sqlscan"
	"github.com/pgtoken/pgtoken/wire"
)

// startupSettings turns a client's startup parameters (and the -c settings
// in its options parameter) into its session settings, keyed by lowercase
// name. Settings that would touch identity are refused.
func startupSettings(params map[string]string, pol sqlscan.Policy) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range params {
		switch {
		case k == "user", k == "database", k == "replication", strings.HasPrefix(k, "_pq_."):
		case k == "options":
			opts, err := parseOptions(v)
			if err != nil {
				return nil, err
			}
			for name, val := range opts {
				out[name] = val
			}
		default:
			out[strings.ToLower(k)] = v
		}
	}
	for name, v := range out {
		if reason := protectedSetting(name, v, pol); reason != "" {
			return nil, wire.Fatalf(wire.CodeInsufficientPrivilege, "pgtoken: startup parameter %q refused: %s", name, reason)
		}
	}
	return out, nil
}

// parseOptions reads the options startup parameter as the server does:
// whitespace-separated switches, backslash escaping the next character;
// only -c name=value and --name=value are accepted.
func parseOptions(v string) (map[string]string, error) {
	var args []string
	var cur strings.Builder
	inArg, esc := false, false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case esc:
			cur.WriteByte(c)
			esc, inArg = false, true
		case c == '\\':
			esc, inArg = true, true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		var kv string
		switch {
		case a == "-c":
			if i+1 >= len(args) {
				return nil, wire.Fatalf(wire.CodeProtocolViolation, "invalid command-line argument for server process: -c needs name=value")
			}
			i++
			kv = args[i]
		case strings.HasPrefix(a, "-c"):
			kv = a[2:]
		case strings.HasPrefix(a, "--"):
			kv = a[2:]
		default:
			return nil, wire.Fatalf(wire.CodeProtocolViolation,
				"invalid command-line argument for server process: %s (pgtoken accepts only -c name=value in options)", a)
		}
		name, val, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return nil, wire.Fatalf(wire.CodeSyntaxError, "-c %s requires a value", kv)
		}
		out[strings.ToLower(strings.ReplaceAll(name, "-", "_"))] = val
	}
	return out, nil
}

// protectedSetting says why a client may not set name to value, or "".
func protectedSetting(name, value string, pol sqlscan.Policy) string {
	n := strings.ToLower(name)
	switch n {
	case "role", "session_authorization":
		return "the role comes from the token"
	case "client_encoding":
		if unsafeEncoding(value) {
			return "client encodings that put ASCII bytes inside multibyte characters are not supported"
		}
	case "standard_conforming_strings":
		switch strings.ToLower(strings.TrimSpace(value)) {
		case "off", "false", "no", "0", "of", "f", "n":
			return "pgtoken requires standard_conforming_strings = on"
		}
	}
	if p := strings.ToLower(pol.ClaimsPrefix); p != "" && (n == p || strings.HasPrefix(n, p+".")) {
		return "the claims come from the token"
	}
	if j := strings.ToLower(pol.ClaimsJSON); j != "" && n == j {
		return "the claims come from the token"
	}
	return ""
}

// unsafeEncoding reports the client-only encodings whose multibyte
// characters may contain ASCII bytes (a backslash, say), which would let a
// string end where pgtoken's lexer does not see it end.
func unsafeEncoding(v string) bool {
	norm := strings.ToUpper(strings.NewReplacer("-", "", "_", "").Replace(strings.TrimSpace(v)))
	switch norm {
	case "SJIS", "SHIFTJIS", "MSKANJI", "WIN932", "CP932",
		"BIG5", "WIN950", "CP950",
		"GBK", "WIN936", "CP936",
		"UHC", "WIN949", "CP949",
		"GB18030", "JOHAB":
		return true
	}
	return false
}
