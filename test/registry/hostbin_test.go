package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/pouchfly/pouchfly/internal/testenv"
)

func TestAddHostBinaries(t *testing.T) {
	_, errB := os.Stat(DefaultBusybox)
	_, errF := os.Stat(DefaultProcpsFree)
	testenv.Require(t, errB == nil && errF == nil, "needs busybox-static and procps (apt-get install busybox-static procps)")
	base, err := BusyboxImage(BusyboxOptions{})
	if err != nil {
		t.Fatal(err)
	}
	libs, err := SharedLibraries(DefaultProcpsFree)
	if err != nil || len(libs) < 2 {
		t.Fatalf("SharedLibraries(%s) = %v, %v; want libc and the loader at least", DefaultProcpsFree, libs, err)
	}
	img, err := AddHostBinaries(base, DefaultProcpsFree)
	if err != nil {
		t.Fatal(err)
	}
	p := img.Platforms[0]
	if len(p.Manifest.Layers) != len(base.Platforms[0].Manifest.Layers)+1 || len(p.Config.RootFS.DiffIDs) != len(p.Manifest.Layers) {
		t.Fatalf("layers %d, diff IDs %d", len(p.Manifest.Layers), len(p.Config.RootFS.DiffIDs))
	}
	if img.IndexDescriptor.Digest != digest.FromBytes(img.IndexBytes) || img.Index.Manifests[0].Digest != digest.FromBytes(p.ManifestBytes) ||
		p.Manifest.Config.Digest != digest.FromBytes(p.ConfigBytes) {
		t.Errorf("digests do not match the bytes")
	}
	// The new layer holds free, every library and the loader, executable.
	l := p.Manifest.Layers[len(p.Manifest.Layers)-1]
	data, ok := img.Blob(l.Digest)
	if !ok {
		t.Fatal("layer blob missing")
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	got := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			got["/"+h.Name] = h.Mode
		}
	}
	for _, want := range append(libs, DefaultProcpsFree) {
		if mode, ok := got[want]; !ok || mode&0o111 == 0 {
			t.Errorf("layer: %s missing or not executable (%o)", want, mode)
		}
	}
	if _, err := AddHostBinaries(base, "/no/such/binary"); err == nil {
		t.Errorf("a missing binary was accepted")
	}
}
