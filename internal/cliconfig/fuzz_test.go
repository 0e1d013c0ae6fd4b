package cliconfig_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/registryproxy"
	"github.com/pouchfly/pouchfly/supernode"
)

// daemonConfig has the shape of cmd/dfget's dfget.yaml (package main is
// not importable).
type daemonConfig struct {
	Peer          peer.Config          `yaml:"peer"`
	Mirror        registryproxy.Config `yaml:"mirror"`
	MetricsListen string               `yaml:"metrics_listen"`
	LogLevel      string               `yaml:"log_level"`
}

// FuzzLoad reads arbitrary bytes as dfget.yaml and supernode.yaml: Load
// either fails with an error or fills the real config structs, whose
// Validate and Print then run without panicking.
func FuzzLoad(f *testing.F) {
	f.Fuzz(func(t *testing.T, yaml []byte) {
		file := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(file, yaml, 0o600); err != nil {
			t.Fatal(err)
		}
		d := daemonConfig{Peer: peer.DefaultConfig(), Mirror: registryproxy.DefaultConfig(), LogLevel: "info"}
		if err := cliconfig.Load(&d, file, nil); err == nil {
			_ = d.Peer.Validate()
			_ = d.Mirror.Validate()
			if _, err := cliconfig.Print(d); err != nil {
				t.Fatalf("Print after a successful Load: %v", err)
			}
		}
		n := supernode.DefaultNodeConfig()
		if err := cliconfig.Load(&n, file, nil); err == nil {
			_ = n.Validate()
			if _, err := cliconfig.Print(n); err != nil {
				t.Fatalf("Print after a successful Load: %v", err)
			}
		}
	})
}
