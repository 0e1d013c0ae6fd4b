package main

import (
	"reflect"
	"testing"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
)

// deploy/dfget.yaml is the defaults, verbatim: it must load, validate and
// equal defaultDaemonConfig (regenerate it with `dfget config default`).
func TestDeployConfigIsCurrent(t *testing.T) {
	cfg := defaultDaemonConfig()
	cfg.Peer.Supernodes = nil // a list in the file must replace, not append
	if err := cliconfig.Load(&cfg, "../../deploy/dfget.yaml", nil); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if want := defaultDaemonConfig(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("deploy/dfget.yaml differs from the defaults:\n got %+v\nwant %+v", cfg, want)
	}
}
