package cliconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/internal/units"
)

type inner struct {
	Zone  string        `yaml:"zone"`
	Rate  units.Bytes   `yaml:"rate"`
	Wait  time.Duration `yaml:"wait"`
	Nodes []string      `yaml:"nodes"`
}

type outer struct {
	Peer  inner  `yaml:"peer"`
	Level string `yaml:"level"`
}

func defaults() outer {
	return outer{Peer: inner{Zone: "z0", Rate: 1 << 20, Wait: time.Second, Nodes: []string{"a:1"}}, Level: "info"}
}

func TestLoadLayers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("peer:\n  zone: zfile\n  rate: 64MiB\n  nodes: [b:2, c:3]\n"), 0o600)
	t.Setenv("POUCHFLY_PEER_WAIT", "5s")
	t.Setenv("POUCHFLY_LEVEL", "debug")
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.String("zone", "", "")
	fs.Parse([]string{"--zone", "zflag"})
	cfg := defaults()
	if err := Load(&cfg, file, map[string]*pflag.Flag{"peer.zone": fs.Lookup("zone")}); err != nil {
		t.Fatal(err)
	}
	want := outer{Peer: inner{Zone: "zflag", Rate: 64 << 20, Wait: 5 * time.Second, Nodes: []string{"b:2", "c:3"}}, Level: "debug"}
	if cfg.Peer.Zone != want.Peer.Zone || cfg.Peer.Rate != want.Peer.Rate || cfg.Peer.Wait != want.Peer.Wait ||
		strings.Join(cfg.Peer.Nodes, ",") != "b:2,c:3" || cfg.Level != "debug" {
		t.Fatalf("got %+v, want %+v", cfg, want)
	}
	// Defaults survive where nothing overrides them.
	cfg = defaults()
	if err := Load(&cfg, "", nil); err != nil || cfg.Peer.Zone != "z0" || cfg.Peer.Rate != 1<<20 {
		t.Fatalf("defaults: %+v %v", cfg, err)
	}
}

func TestLoadRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"typo":      "peer:\n  zoen: x\n",
		"bad size":  "peer:\n  rate: lots\n",
		"bad yaml":  "peer: [\n",
		"bad delay": "peer:\n  wait: soon\n",
	} {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		os.WriteFile(f, []byte(body), 0o600)
		cfg := defaults()
		if err := Load(&cfg, f, nil); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
	cfg := defaults()
	if err := Load(&cfg, filepath.Join(dir, "missing.yaml"), nil); err == nil {
		t.Error("missing file accepted")
	}
	out, err := Print(defaults())
	if err != nil || !strings.Contains(out, "rate: 1MiB") || !strings.Contains(out, "wait: 1s") {
		t.Errorf("Print = %q, %v", out, err)
	}
}
