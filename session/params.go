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
		if reason := pol.CheckSetting(name, v); reason != "" {
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
