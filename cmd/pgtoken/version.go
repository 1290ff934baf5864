package main

import (
	"runtime/debug"
	"strings"
)

// version is stamped at build time with -ldflags "-X main.version=...":
// make build stamps `git describe --tags --always --dirty` (v0.3.0, or
// v0.3.0-2-g538fe19 after the tag), the Dockerfile its VERSION argument.
// Left at "dev", the build info decides (buildVersion).
var version = "dev"

// buildVersion is the version pgtoken reports.
func buildVersion() string {
	info, _ := debug.ReadBuildInfo()
	return resolveVersion(version, info)
}

// resolveVersion is stamped, if a build stamped one; else the main
// module's version the go command recorded (v0.3.0 for go install
// github.com/pgtoken/pgtoken/cmd/pgtoken@v0.3.0; a go build in a git
// checkout records one derived from the tags and the commit); else the
// commit it was built from (with -dirty for a modified tree); else "dev".
func resolveVersion(stamped string, info *debug.BuildInfo) string {
	if stamped != "" && stamped != "dev" {
		return stamped
	}
	if info == nil {
		return "dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		rev += "-dirty"
	}
	return strings.TrimSpace(rev)
}
