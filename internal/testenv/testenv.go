// Package testenv holds the project's one rule for tests that need root,
// a kernel feature or an installed tool: outside CI a missing prerequisite
// skips the test, saying why; under CI=true (where `make test` installs
// everything) it fails it.
package testenv

import (
	"os"
	"testing"
)

// InCI reports whether the tests run in CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Require fails (under CI) or skips the test when ok is false.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("prerequisite missing under CI: %s", why)
	}
	t.Skipf("skipped: %s", why)
}
