package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// MiB is 1<<20 bytes.
const MiB = 1 << 20

// ImageOptions configures GenerateImage. The zero value gives 3 layers of
// 1–8 MiB of random content per platform, for linux/amd64 and linux/arm64,
// the first 2 layers shared by both platforms.
type ImageOptions struct {
	// Layers per platform manifest (default 3).
	Layers int
	// UniqueLayers is how many of each platform's layers (the last ones)
	// belong to that platform alone; the others are shared by every
	// platform. 0 means 1; a negative value means every layer is shared.
	UniqueLayers int
	// MinLayerSize and MaxLayerSize bound the uncompressed content of each
	// layer (default 1 MiB and 8 MiB); each layer gets a size drawn
	// uniformly in between. With random content the gzip'd blob is the same
	// size plus a few bytes per 64 KiB and per file.
	MinLayerSize, MaxLayerSize int64
	// FilesPerLayer is the number of regular files per layer (default 4).
	FilesPerLayer int
	// Compressible fills files with low-entropy text (about 2:1 under
	// gzip) instead of random bytes.
	Compressible bool
	// Platforms (default linux/amd64 and linux/arm64).
	Platforms []ocispec.Platform
	// Seed makes the image reproducible; 0 picks a random seed.
	Seed uint64
	// Created is the config's creation time (default 2024-01-01T00:00:00Z).
	Created time.Time
}

// Blob is one content-addressed blob of an image.
type Blob struct {
	Descriptor ocispec.Descriptor
	Data       []byte
}

// PlatformImage is one platform's manifest and config.
type PlatformImage struct {
	// Descriptor of the manifest, with its platform (as in the index).
	Descriptor    ocispec.Descriptor
	Manifest      ocispec.Manifest
	ManifestBytes []byte
	Config        ocispec.Image
	ConfigBytes   []byte
}

// BlobBytes is the size of the blobs a client pulling this platform
// fetches: its config and its layers (manifest excluded).
func (p *PlatformImage) BlobBytes() int64 {
	n := p.Manifest.Config.Size
	for _, l := range p.Manifest.Layers {
		n += l.Size
	}
	return n
}

// Image is a generated multi-platform OCI image held in memory.
type Image struct {
	// Index is the OCI image index over Platforms; IndexBytes its exact
	// bytes and IndexDescriptor their descriptor.
	Index           ocispec.Index
	IndexBytes      []byte
	IndexDescriptor ocispec.Descriptor
	// Platforms holds one manifest + config per platform, in option order.
	Platforms []PlatformImage
	// Blobs holds every distinct layer and config, layers first.
	Blobs []Blob
}

// Blob returns the data of blob d (layer or config).
func (img *Image) Blob(d digest.Digest) ([]byte, bool) {
	for _, b := range img.Blobs {
		if b.Descriptor.Digest == d {
			return b.Data, true
		}
	}
	return nil, false
}

// BlobBytes is the total size of the distinct blobs (layers and configs):
// what an origin sends once when every platform is pulled once.
func (img *Image) BlobBytes() int64 {
	var n int64
	for _, b := range img.Blobs {
		n += b.Descriptor.Size
	}
	return n
}

// Platform returns the platform image for os/arch, or nil.
func (img *Image) Platform(os, arch string) *PlatformImage {
	for i := range img.Platforms {
		p := &img.Platforms[i]
		if p.Descriptor.Platform != nil && p.Descriptor.Platform.OS == os && p.Descriptor.Platform.Architecture == arch {
			return p
		}
	}
	return nil
}

// GenerateImage builds an image as opts say: real gzip'd tar layers (with
// a pouchfly/layer-N/ directory of files each) that containerd can unpack,
// one OCI config and manifest per platform, and an OCI index over them.
// It is CPU-bound (tens of ms per MiB at most) and holds everything in
// memory.
func GenerateImage(opts ImageOptions) (*Image, error) {
	if opts.Layers == 0 {
		opts.Layers = 3
	}
	if opts.MinLayerSize == 0 && opts.MaxLayerSize == 0 {
		opts.MinLayerSize, opts.MaxLayerSize = 1*MiB, 8*MiB
	}
	if opts.MaxLayerSize == 0 {
		opts.MaxLayerSize = opts.MinLayerSize
	}
	if opts.FilesPerLayer == 0 {
		opts.FilesPerLayer = 4
	}
	if len(opts.Platforms) == 0 {
		opts.Platforms = []ocispec.Platform{
			{OS: "linux", Architecture: "amd64"},
			{OS: "linux", Architecture: "arm64"},
		}
	}
	unique := opts.UniqueLayers
	switch {
	case unique == 0:
		unique = 1
	case unique < 0:
		unique = 0
	}
	if opts.Layers < 0 || opts.FilesPerLayer < 0 || opts.MinLayerSize < 0 ||
		opts.MaxLayerSize < opts.MinLayerSize || unique > opts.Layers {
		return nil, fmt.Errorf("generate image: bad options %+v: %w", opts, errdefs.ErrInvalid)
	}
	if opts.Seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		opts.Seed = binary.LittleEndian.Uint64(b[:]) | 1
	}
	if opts.Created.IsZero() {
		opts.Created = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	g := &generator{opts: opts, rng: mrand.New(mrand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15))}
	var seedBytes [32]byte
	binary.LittleEndian.PutUint64(seedBytes[:], opts.Seed)
	g.content = mrand.NewChaCha8(seedBytes)

	img := &Image{}
	shared := opts.Layers - unique
	type layer struct {
		desc   ocispec.Descriptor
		diffID digest.Digest
	}
	var sharedLayers []layer
	newLayer := func() (layer, error) {
		data, diffID, err := g.layer(len(img.Blobs))
		if err != nil {
			return layer{}, err
		}
		d := ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageLayerGzip,
			Digest:    digest.FromBytes(data),
			Size:      int64(len(data)),
		}
		img.Blobs = append(img.Blobs, Blob{Descriptor: d, Data: data})
		return layer{d, diffID}, nil
	}
	for range shared {
		l, err := newLayer()
		if err != nil {
			return nil, err
		}
		sharedLayers = append(sharedLayers, l)
	}
	var configs []Blob
	for _, plat := range opts.Platforms {
		layers := append([]layer(nil), sharedLayers...)
		for range unique {
			l, err := newLayer()
			if err != nil {
				return nil, err
			}
			layers = append(layers, l)
		}
		created := opts.Created
		cfg := ocispec.Image{
			Created:  &created,
			Author:   "pouchfly test image generator",
			Platform: plat,
			Config: ocispec.ImageConfig{
				Env:    []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
				Cmd:    []string{"/bin/sh"},
				Labels: map[string]string{"org.pouchfly.test.seed": fmt.Sprint(opts.Seed)},
			},
			RootFS: ocispec.RootFS{Type: "layers"},
		}
		man := ocispec.Manifest{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: ocispec.MediaTypeImageManifest,
		}
		for i, l := range layers {
			cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.diffID)
			cfg.History = append(cfg.History, ocispec.History{
				Created:   &created,
				CreatedBy: fmt.Sprintf("pouchfly-test layer %d", i),
			})
			man.Layers = append(man.Layers, l.desc)
		}
		cfgBytes, err := json.Marshal(cfg)
		if err != nil {
			return nil, err
		}
		man.Config = ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageConfig,
			Digest:    digest.FromBytes(cfgBytes),
			Size:      int64(len(cfgBytes)),
		}
		configs = append(configs, Blob{Descriptor: man.Config, Data: cfgBytes})
		manBytes, err := json.Marshal(man)
		if err != nil {
			return nil, err
		}
		p := plat
		img.Platforms = append(img.Platforms, PlatformImage{
			Descriptor: ocispec.Descriptor{
				MediaType: ocispec.MediaTypeImageManifest,
				Digest:    digest.FromBytes(manBytes),
				Size:      int64(len(manBytes)),
				Platform:  &p,
			},
			Manifest:      man,
			ManifestBytes: manBytes,
			Config:        cfg,
			ConfigBytes:   cfgBytes,
		})
	}
	for _, c := range configs {
		if _, dup := img.Blob(c.Descriptor.Digest); !dup {
			img.Blobs = append(img.Blobs, c)
		}
	}
	img.Index = ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
	}
	for _, p := range img.Platforms {
		img.Index.Manifests = append(img.Index.Manifests, p.Descriptor)
	}
	var err error
	if img.IndexBytes, err = json.Marshal(img.Index); err != nil {
		return nil, err
	}
	img.IndexDescriptor = ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageIndex,
		Digest:    digest.FromBytes(img.IndexBytes),
		Size:      int64(len(img.IndexBytes)),
	}
	return img, nil
}

type generator struct {
	opts    ImageOptions
	rng     *mrand.Rand
	content *mrand.ChaCha8
}

// layer returns a gzip'd tar and the digest of the uncompressed tar.
func (g *generator) layer(n int) ([]byte, digest.Digest, error) {
	o := g.opts
	size := o.MinLayerSize
	if o.MaxLayerSize > o.MinLayerSize {
		size += g.rng.Int64N(o.MaxLayerSize - o.MinLayerSize + 1)
	}
	// Split size among the files: random cut points.
	sizes := make([]int64, o.FilesPerLayer)
	if o.FilesPerLayer > 0 {
		left := size
		for i := range sizes[:len(sizes)-1] {
			share := left / int64(len(sizes)-i)
			if share > 0 {
				share = share/2 + g.rng.Int64N(share+1)
			}
			sizes[i] = min(share, left)
			left -= sizes[i]
		}
		sizes[len(sizes)-1] = left
	}

	var buf bytes.Buffer
	buf.Grow(int(size) + int(size)/1000 + 4096)
	level := gzip.NoCompression
	if o.Compressible {
		level = gzip.BestSpeed
	}
	gz, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		return nil, "", err
	}
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diff))
	mtime := o.Created
	dirs := []string{"pouchfly/", fmt.Sprintf("pouchfly/layer-%d/", n)}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX,
		}); err != nil {
			return nil, "", err
		}
	}
	chunk := make([]byte, 256<<10)
	for i, sz := range sizes {
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg,
			Name:     fmt.Sprintf("pouchfly/layer-%d/file-%d.bin", n, i),
			Mode:     0o644,
			Size:     sz,
			ModTime:  mtime,
			Format:   tar.FormatPAX,
		}); err != nil {
			return nil, "", err
		}
		for left := sz; left > 0; {
			c := chunk[:min(int64(len(chunk)), left)]
			g.fill(c)
			if _, err := tw.Write(c); err != nil {
				return nil, "", err
			}
			left -= int64(len(c))
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	if err := gz.Close(); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), digest.NewDigestFromBytes(digest.SHA256, diff.Sum(nil)), nil
}

func (g *generator) fill(p []byte) {
	_, _ = g.content.Read(p)
	if g.opts.Compressible {
		const alphabet = "etaoin shrdlu\ncmfwypvbgkjqxz.,"
		for i, b := range p {
			// Low entropy: the 16 most common characters, skewed.
			p[i] = alphabet[(b&0x0f)&(b>>4|0x07)]
		}
	}
}
