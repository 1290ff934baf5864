package pgmodel

import (
	"sort"
	"strconv"
	"strings"
)

// Settings follow guc.c: each setting keeps a stack of what it was at
// each transaction nesting level that changed it, so that SET (session)
// survives a commit and rolls back with an abort, SET LOCAL ends with the
// transaction, and a SET LOCAL after a SET in the same transaction falls
// back to the SET's value at commit.

// gucAction is how a change was made at a nesting level.
type gucAction uint8

const (
	actSet      gucAction = iota + 1 // SET
	actLocal                         // SET LOCAL
	actSetLocal                      // SET, then SET LOCAL: masked keeps the SET's value
)

// gucValue is a setting's value and where it came from ("default" or
// "session"), as pg_settings reports.
type gucValue struct {
	val    string
	source string
}

// gucFrame is one stack entry (guc.c's GucStack).
type gucFrame struct {
	level  int
	state  gucAction
	prior  gucValue
	masked gucValue
}

// setting is one configuration parameter.
type setting struct {
	name        string // as reported (lowercase)
	placeholder bool   // a custom name with a dot: created on first use
	noResetAll  bool   // RESET ALL leaves it alone (role)
	kind        gucKind
	boot        string
	cur         gucValue
	stack       []gucFrame
}

// gucKind says how a value is checked and shown.
type gucKind uint8

const (
	gText gucKind = iota
	gMillis
	gRole
)

// gucs is one backend's settings.
type gucs struct {
	m     map[string]*setting
	level int // the current nesting level: 0 outside a transaction, 1 top, 2+ subtransactions
}

// builtinSettings are the settings the model knows besides placeholders.
var builtinSettings = []setting{
	{name: "role", kind: gRole, boot: "none", noResetAll: true},
	{name: "statement_timeout", kind: gMillis, boot: "0"},
	{name: "lock_timeout", kind: gMillis, boot: "0"},
	{name: "idle_in_transaction_session_timeout", kind: gMillis, boot: "0"},
	{name: "application_name", kind: gText, boot: ""},
	{name: "search_path", kind: gText, boot: `"$user", public`},
}

func newGucs() *gucs {
	g := &gucs{m: map[string]*setting{}}
	for _, s := range builtinSettings {
		s := s
		s.cur = gucValue{val: s.boot, source: "default"}
		g.m[s.name] = &s
	}
	return g
}

// lookup finds a setting; create makes a placeholder for a custom name.
func (g *gucs) lookup(name string, create bool) (*setting, *Error) {
	key := strings.ToLower(name)
	if s := g.m[key]; s != nil {
		return s, nil
	}
	if !strings.Contains(key, ".") || !create {
		return nil, &Error{Code: "42704", Message: "unrecognized configuration parameter \"" + name + "\""}
	}
	if !validPlaceholder(key) {
		return nil, &Error{Code: "42602", Message: "invalid configuration parameter name \"" + name + "\"",
			Detail: "Custom parameter names must be two or more simple identifiers separated by dots."}
	}
	s := &setting{name: key, placeholder: true, cur: gucValue{source: "default"}}
	g.m[key] = s
	return s, nil
}

// validPlaceholder checks a custom setting name: identifiers joined by dots.
func validPlaceholder(name string) bool {
	for _, part := range strings.Split(name, ".") {
		if part == "" || !isIdentStart(part[0]) {
			return false
		}
		for i := 0; i < len(part); i++ {
			if !isIdentByte(part[i]) {
				return false
			}
		}
	}
	return true
}

// canon checks a value for a setting and returns it as stored.
func (s *setting) canon(v string, roles func(string) *Error) (string, *Error) {
	switch s.kind {
	case gMillis:
		ms, ok := parseMillis(v)
		if !ok {
			return "", &Error{Code: "22023", Message: "invalid value for parameter \"" + s.name + "\": \"" + v + "\""}
		}
		return strconv.FormatInt(ms, 10), nil
	case gRole:
		if strings.EqualFold(v, "none") {
			return "none", nil
		}
		if err := roles(v); err != nil {
			return "", err
		}
		return v, nil
	}
	return v, nil
}

// show renders the stored value as SHOW and current_setting do.
func (s *setting) show() string {
	if s.kind == gMillis {
		ms, _ := strconv.ParseInt(s.cur.val, 10, 64)
		return showMillis(ms)
	}
	return s.cur.val
}

// parseMillis reads a time setting: a number of milliseconds, or a number
// with a unit.
func parseMillis(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	i := 0
	for i < len(v) && (isDigit(v[i]) || i == 0 && v[i] == '-') {
		i++
	}
	n, err := strconv.ParseInt(v[:i], 10, 64)
	if err != nil {
		return 0, false
	}
	unit := map[string]int64{"": 1, "ms": 1, "s": 1000, "min": 60000, "h": 3600000, "d": 86400000}
	m, ok := unit[strings.TrimSpace(v[i:])]
	if !ok {
		return 0, false
	}
	return n * m, true
}

// showMillis renders milliseconds in the largest unit that divides them.
func showMillis(ms int64) string {
	if ms == 0 {
		return "0"
	}
	for _, u := range []struct {
		n    int64
		name string
	}{{86400000, "d"}, {3600000, "h"}, {60000, "min"}, {1000, "s"}} {
		if ms%u.n == 0 {
			return strconv.FormatInt(ms/u.n, 10) + u.name
		}
	}
	return strconv.FormatInt(ms, 10) + "ms"
}

// set changes a setting at the current level; local is SET LOCAL.
// Outside any transaction (level 0) the change is simply made.
func (g *gucs) set(s *setting, v gucValue, local bool) {
	if g.level > 0 {
		act := actSet
		if local {
			act = actLocal
		}
		g.push(s, act)
	}
	s.cur = v
}

// push records the value before a change at the current level
// (push_old_value).
func (g *gucs) push(s *setting, act gucAction) {
	if n := len(s.stack); n > 0 && s.stack[n-1].level == g.level {
		top := &s.stack[n-1]
		switch act {
		case actSet:
			top.state = actSet // SET overrides any prior action at this level
		case actLocal:
			if top.state == actSet {
				top.masked = s.cur
				top.state = actSetLocal
			}
		}
		return
	}
	s.stack = append(s.stack, gucFrame{level: g.level, state: act, prior: s.cur})
}

// enter starts a (sub)transaction level.
func (g *gucs) enter() { g.level++ }

// leave ends the current level, committing or aborting (AtEOXact_GUC).
func (g *gucs) leave(commit bool) {
	lvl := g.level
	for _, s := range g.m {
		for n := len(s.stack); n > 0 && s.stack[n-1].level >= lvl; n = len(s.stack) {
			top := s.stack[n-1]
			var prev *gucFrame
			if n > 1 {
				prev = &s.stack[n-2]
			}
			restorePrior, restoreMasked := false, false
			switch {
			case !commit:
				restorePrior = true
			case top.level == 1:
				switch top.state {
				case actSetLocal:
					restoreMasked = true
				case actLocal:
					restorePrior = true
				}
			case prev == nil || prev.level < top.level-1:
				// No entry at the level below: this one moves down (and
				// the loop ends, the top now being below lvl).
				s.stack[n-1].level--
				continue
			default:
				switch top.state {
				case actSet:
					prev.state = actSet
				case actLocal:
					if prev.state == actSet {
						prev.masked = top.prior
						prev.state = actSetLocal
					}
				case actSetLocal:
					prev.masked = top.masked
					prev.state = actSetLocal
				}
			}
			s.stack = s.stack[:n-1]
			switch {
			case restorePrior:
				s.cur = top.prior
			case restoreMasked:
				s.cur = top.masked
			}
		}
	}
	g.level--
}

// resetAll is RESET ALL: every setting but the role back to its default,
// as a session-level change.
func (g *gucs) resetAll() {
	for _, s := range g.m {
		if s.noResetAll {
			continue
		}
		g.set(s, gucValue{val: s.boot, source: "default"}, false)
	}
}

// sessionSourced lists the settings (not placeholders, not the role: the
// ones pg_settings shows) whose value came from a SET, sorted by name.
func (g *gucs) sessionSourced() []*setting {
	var out []*setting
	for _, s := range g.m {
		if !s.placeholder && s.kind != gRole && s.cur.source == "session" {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
