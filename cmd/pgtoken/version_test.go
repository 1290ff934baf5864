package main

import (
	"runtime/debug"
	"testing"
)

// TestResolveVersion: a version stamped by make build (git describe) wins;
// without one, go install ...@v0.3.0 reports the module version, a go build
// in a checkout the commit it was built from, and anything else "dev".
func TestResolveVersion(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		name    string
		stamped string
		info    *debug.BuildInfo
		want    string
	}{
		{"make build at a tag", "v0.3.0", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "v0.3.0"},
		{"make build after a tag", "v0.3.0-2-g538fe19-dirty", nil, "v0.3.0-2-g538fe19-dirty"},
		{"go install @version", "dev", &debug.BuildInfo{Main: debug.Module{Path: "github.com/pgtoken/pgtoken", Version: "v0.3.0"}}, "v0.3.0"},
		{"go install @version, not stamped at all", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.1-0.20261205191800-538fe19abcde"}}, "v0.3.1-0.20261205191800-538fe19abcde"},
		{"go build in a checkout, Go's own stamp", "dev", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.0+dirty"}, Settings: vcs("538fe19abcdef0123456789", "true")}, "v0.3.0+dirty"},
		{"go build without a module version", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("538fe19abcdef0123456789", "false")}, "538fe19abcde"},
		{"go build of a modified tree", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("538fe19abcdef0123456789", "true")}, "538fe19abcde-dirty"},
		{"go run, no VCS", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
		{"no build info", "dev", nil, "dev"},
	} {
		if got := resolveVersion(tc.stamped, tc.info); got != tc.want {
			t.Errorf("%s: resolveVersion(%q, …) = %q, want %q", tc.name, tc.stamped, got, tc.want)
		}
	}
}
