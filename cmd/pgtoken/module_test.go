package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/zip"
)

// gitFile is a tracked file, as golang.org/x/mod/zip reads it.
type gitFile struct{ root, path string }

func (f gitFile) Path() string                 { return f.path }
func (f gitFile) Lstat() (os.FileInfo, error)  { return os.Lstat(filepath.Join(f.root, f.path)) }
func (f gitFile) Open() (io.ReadCloser, error) { return os.Open(filepath.Join(f.root, f.path)) }

// TestModuleZipIsValid: go install github.com/pgtoken/pgtoken/cmd/pgtoken@v0.3.0
// downloads the module zip the go command makes of the tagged commit, and a
// single file the go command refuses (a name Windows reserves, such as
// "nul"; characters outside its set) makes that zip, and so every go install
// of that version, fail. This checks the tracked files as a tag would have
// them.
func TestModuleZipIsValid(t *testing.T) {
	root := filepath.Join("..", "..")
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Skipf("not a git checkout (%v): nothing to check", err)
	}
	var files []zip.File
	for _, p := range strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00") {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil { // deleted but not yet committed: not in a tag
			files = append(files, gitFile{root, p})
		}
	}
	checked, err := zip.CheckFiles(files)
	for _, f := range checked.Invalid {
		t.Errorf("%s: %v (rename it: the go command refuses a module holding it)", f.Path, f.Err)
	}
	if err != nil && len(checked.Invalid) == 0 {
		t.Error(err)
	}
	if len(checked.Valid) < 50 || !bytes.Contains(out, []byte("cmd/pgtoken/main.go")) {
		t.Fatalf("only %d valid files: the listing is wrong", len(checked.Valid))
	}
}
