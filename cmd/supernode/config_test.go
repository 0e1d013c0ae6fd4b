package main

import (
	"reflect"
	"testing"

	"github.com/pouchfly/pouchfly/internal/cliconfig"
	"github.com/pouchfly/pouchfly/supernode"
)

// deploy/supernode.yaml is the defaults, verbatim (`supernode config default`).
func TestDeployConfigIsCurrent(t *testing.T) {
	cfg := supernode.DefaultNodeConfig()
	if err := cliconfig.Load(&cfg, "../../deploy/supernode.yaml", nil); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if want := supernode.DefaultNodeConfig(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("deploy/supernode.yaml differs from the defaults:\n got %+v\nwant %+v", cfg, want)
	}
}
