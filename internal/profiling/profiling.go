// Package profiling lets a long-running Pouchfly process write a CPU
// profile of its whole life, for benchmarks on the testbed where no
// debug endpoint is reachable: with POUCHFLY_PROFILE_DIR set, Start writes
// <dir>/<name>-<pid>.cpu.pprof until the returned stop function runs.
package profiling

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
)

// EnvDir names the environment variable that turns profiling on.
const EnvDir = "POUCHFLY_PROFILE_DIR"

// Start starts a CPU profile when EnvDir is set and returns the function
// that stops it and closes the file (a no-op otherwise).
func Start(name string) (stop func(), err error) {
	dir := os.Getenv(EnvDir)
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvDir, err)
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.cpu.pprof", name, os.Getpid())))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvDir, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", EnvDir, err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
