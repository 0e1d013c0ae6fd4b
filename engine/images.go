package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// NormalizeRef turns an image name as users type it ("busybox",
// "reg:5000/app:v1", "app@sha256:…") into containerd's full reference
// ("docker.io/library/busybox:latest").
func NormalizeRef(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("image name is empty: %w", errdefs.ErrInvalid)
	}
	r, err := reference.ParseDockerRef(s)
	if err != nil {
		return "", fmt.Errorf("invalid image reference %q: %v: %w", s, err, errdefs.ErrInvalid)
	}
	return r.String(), nil
}

// familiar prints a normalized reference as users type it.
func familiar(ref string) string {
	r, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ref
	}
	return reference.FamiliarString(r)
}

type pullSub struct{ f func(api.JSONMessage) }

// pullOp is one pull in progress; concurrent pulls of the same reference
// share it.
type pullOp struct {
	done chan struct{}
	err  error
	mu   sync.Mutex
	subs []*pullSub
	last map[string]api.JSONMessage // latest message per layer
	msgs []api.JSONMessage          // non-layer messages so far
}

func (p *pullOp) emit(m api.JSONMessage) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m.ID != "" {
		p.last[m.ID] = m
	} else {
		p.msgs = append(p.msgs, m)
	}
	for _, s := range p.subs {
		s.f(m)
	}
}

// Pull pulls ref for linux/<this arch> through the agent's mirror
// (hosts.toml), unpacks it into the snapshotter, and reports progress to
// progress (per layer: "Pulling fs layer", "Downloading" with bytes,
// "Download complete", "Pull complete"; "Already exists" for layers held).
// Concurrent pulls of one reference with the same credentials share the
// work. auth (nil: anonymous) is used for ref's registry only, for this
// pull only. progress may be nil; it is called from one goroutine at a
// time.
func (e *Engine) Pull(ctx context.Context, name string, auth *api.AuthConfig, progress func(api.JSONMessage)) error {
	ref, err := NormalizeRef(name)
	if err != nil {
		return err
	}
	registry, err := api.RegistryOf(ref)
	if err != nil {
		return err
	}
	auth = authFor(registry, auth)
	key := ref + "\x00" + authKey(auth)
	if progress == nil {
		progress = func(api.JSONMessage) {}
	}
	var mu sync.Mutex
	report := func(m api.JSONMessage) { mu.Lock(); progress(m); mu.Unlock() }
	e.mu.Lock()
	op, joined := e.pulls[key]
	if !joined {
		op = &pullOp{done: make(chan struct{}), last: map[string]api.JSONMessage{}}
		e.pulls[key] = op
	}
	op.mu.Lock()
	for _, m := range op.msgs {
		report(m)
	}
	for _, m := range op.last {
		report(m)
	}
	me := &pullSub{f: report}
	op.subs = append(op.subs, me)
	op.mu.Unlock()
	e.mu.Unlock()
	if !joined {
		e.bg.Add(1)
		go func() {
			defer e.bg.Done()
			op.err = e.pull(e.ctx, ref, auth, op.emit)
			e.mu.Lock()
			delete(e.pulls, key)
			e.mu.Unlock()
			close(op.done)
		}()
	}
	select {
	case <-op.done:
		return op.err
	case <-ctx.Done():
		// The pull goes on for the others (and the cache).
		op.mu.Lock()
		for i, s := range op.subs {
			if s == me {
				op.subs = append(op.subs[:i], op.subs[i+1:]...)
				break
			}
		}
		op.mu.Unlock()
		return ctx.Err()
	}
}

func (e *Engine) pull(ctx context.Context, ref string, auth *api.AuthConfig, emit func(api.JSONMessage)) error {
	ctx = e.nsCtx(ctx)
	start := time.Now()
	cs := e.client.ContentStore()
	named, _ := reference.ParseNormalizedNamed(ref)
	tag := "latest"
	if t, ok := named.(reference.Tagged); ok {
		tag = t.Tag()
	}
	emit(api.JSONMessage{Status: "Pulling from " + reference.FamiliarName(named), ID: tag})

	var (
		mu      sync.Mutex
		layers  []ocispec.Descriptor
		known   = map[digest.Digest]bool{}
		reports = map[digest.Digest]string{} // last status sent
	)
	shortID := func(d digest.Digest) string { return d.Encoded()[:12] }
	handler := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if images.IsLayerType(desc.MediaType) {
			mu.Lock()
			if !known[desc.Digest] {
				known[desc.Digest] = true
				layers = append(layers, desc)
				status := "Pulling fs layer"
				if _, err := cs.Info(ctx, desc.Digest); err == nil {
					status = "Already exists"
				}
				reports[desc.Digest] = status
				emit(api.JSONMessage{Status: status, ID: shortID(desc.Digest)})
			}
			mu.Unlock()
		}
		return nil, nil
	})
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			sts, err := cs.ListStatuses(ctx, "")
			if err != nil {
				continue
			}
			active := map[digest.Digest]content.Status{}
			for _, s := range sts {
				if d, ok := strings.CutPrefix(s.Ref, "layer-"); ok {
					active[digest.Digest(d)] = s
				}
			}
			mu.Lock()
			for _, l := range layers {
				if reports[l.Digest] == "Already exists" || reports[l.Digest] == "Download complete" {
					continue
				}
				if s, ok := active[l.Digest]; ok {
					total := s.Total
					if total == 0 {
						total = l.Size
					}
					reports[l.Digest] = "Downloading"
					emit(api.JSONMessage{Status: "Downloading", ID: shortID(l.Digest), Progress: &api.JSONProgress{Current: s.Offset, Total: total}})
					continue
				}
				if _, err := cs.Info(ctx, l.Digest); err == nil {
					reports[l.Digest] = "Download complete"
					emit(api.JSONMessage{Status: "Download complete", ID: shortID(l.Digest), Progress: &api.JSONProgress{Current: l.Size, Total: l.Size}})
				}
			}
			mu.Unlock()
		}
	}()
	var existed bool
	if _, err := e.client.ImageService().Get(ctx, ref); err == nil {
		existed = true
	}
	img, err := e.client.Pull(ctx, ref,
		client.WithPullUnpack,
		client.WithPullSnapshotter(e.cfg.Snapshotter),
		client.WithResolver(docker.NewResolver(e.pullResolver(ctx, auth))),
		client.WithImageHandler(handler),
		client.WithMaxConcurrentDownloads(4),
	)
	close(stop)
	<-polled
	if err != nil {
		e.metrics.pulls.WithLabelValues("error").Inc()
		e.log.Warn("pull failed", "ref", ref, "credentials", auth != nil, "err", err)
		return classifyPullError(ref, auth != nil, err)
	}
	e.metrics.pulls.WithLabelValues("ok").Inc()
	e.metrics.pullSeconds.Observe(time.Since(start).Seconds())
	mu.Lock()
	for _, l := range layers {
		if reports[l.Digest] != "Already exists" {
			emit(api.JSONMessage{Status: "Pull complete", ID: shortID(l.Digest), Progress: &api.JSONProgress{Current: l.Size, Total: l.Size}})
		}
	}
	mu.Unlock()
	emit(api.JSONMessage{Status: "Digest: " + img.Target().Digest.String()})
	if existed {
		emit(api.JSONMessage{Status: "Status: Image is up to date for " + familiar(ref)})
	} else {
		emit(api.JSONMessage{Status: "Status: Downloaded newer image for " + familiar(ref)})
	}
	e.log.Info("pulled", "ref", ref, "digest", img.Target().Digest, "layers", len(layers), "seconds", time.Since(start).Seconds())
	return nil
}

// classifyPullError gives pull failures a class and a message users can
// act on (withAuth: the pull had credentials).
func classifyPullError(ref string, withAuth bool, err error) error {
	msg := err.Error()
	registry, _ := api.RegistryOf(ref)
	denied := false
	for _, s := range []string{"401", "403", "unauthorized", "access denied", "authorization failed", "insufficient_scope"} {
		denied = denied || strings.Contains(msg, s)
	}
	switch {
	case denied && withAuth:
		return fmt.Errorf("pull %s: access denied: %s refused the credentials for this repository (wrong username or password? pouch login %s): %v: %w",
			familiar(ref), registry, registry, err, errdefs.ErrForbidden)
	case denied:
		return fmt.Errorf("pull %s: access denied: the repository does not exist or %s requires credentials (pouch login %s): %v: %w",
			familiar(ref), registry, registry, err, errdefs.ErrForbidden)
	case cerrdefs.IsNotFound(err) || strings.Contains(msg, "not found"):
		return fmt.Errorf("pull %s: image not found in the registry (or through the agent's mirror): %v: %w", familiar(ref), err, errdefs.ErrNotFound)
	case errors.Is(err, context.Canceled):
		return err
	}
	return fmt.Errorf("pull %s: %v: %w", familiar(ref), err, errdefs.ErrUnavailable)
}

// getImage returns the local image named name (normalized), with
// ErrNotFound saying "No such image".
func (e *Engine) getImage(ctx context.Context, name string) (client.Image, string, error) {
	ref, err := NormalizeRef(name)
	if err != nil {
		return nil, "", err
	}
	img, err := e.client.GetImage(e.nsCtx(ctx), ref)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			// An image ID (config digest) or its prefix.
			if img2, ok := e.imageByID(ctx, name); ok {
				return img2, img2.Name(), nil
			}
			return nil, "", fmt.Errorf("no such image: %s: %w", name, errdefs.ErrNotFound)
		}
		return nil, "", err
	}
	return img, ref, nil
}

func (e *Engine) imageByID(ctx context.Context, id string) (client.Image, bool) {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) < 4 || strings.ContainsAny(id, "/:") {
		return nil, false
	}
	imgs, err := e.client.ListImages(e.nsCtx(ctx))
	if err != nil {
		return nil, false
	}
	for _, img := range imgs {
		cfg, err := img.Config(e.nsCtx(ctx))
		if err == nil && strings.HasPrefix(cfg.Digest.Encoded(), id) {
			return img, true
		}
	}
	return nil, false
}

// Images answers GET /images/json: one entry per image ID (config
// digest), with its tags.
func (e *Engine) Images(ctx context.Context) ([]api.ImageSummary, error) {
	ctx = e.nsCtx(ctx)
	imgs, err := e.client.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]*api.ImageSummary{}
	var order []string
	for _, img := range imgs {
		cfg, err := img.Config(ctx)
		if err != nil {
			continue // another platform's image, or content gone
		}
		id := cfg.Digest.String()
		s, ok := byID[id]
		if !ok {
			size, _ := img.Size(ctx)
			usize, err := img.Usage(ctx, client.WithSnapshotUsage())
			if err == nil && usize > 0 {
				size = usize
			}
			s = &api.ImageSummary{ID: id, Created: img.Metadata().CreatedAt.Unix(), Size: size}
			if created := imageCreated(ctx, img); !created.IsZero() {
				s.Created = created.Unix()
			}
			byID[id] = s
			order = append(order, id)
		}
		name := img.Name()
		if r, err := reference.ParseNormalizedNamed(name); err == nil {
			if _, isDigest := r.(reference.Canonical); isDigest {
				s.RepoDigests = append(s.RepoDigests, reference.FamiliarString(r))
				continue
			}
			s.RepoTags = append(s.RepoTags, reference.FamiliarString(r))
			s.RepoDigests = append(s.RepoDigests, reference.FamiliarName(r)+"@"+img.Target().Digest.String())
		}
	}
	out := make([]api.ImageSummary, 0, len(order))
	for _, id := range order {
		sort.Strings(byID[id].RepoTags)
		out = append(out, *byID[id])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created > out[j].Created })
	return out, nil
}

func imageCreated(ctx context.Context, img client.Image) time.Time {
	spec, err := img.Spec(ctx)
	if err != nil || spec.Created == nil {
		return time.Time{}
	}
	return *spec.Created
}

// ImageInspect answers GET /images/{name}/json.
func (e *Engine) ImageInspect(ctx context.Context, name string) (api.ImageInspect, error) {
	img, ref, err := e.getImage(ctx, name)
	if err != nil {
		return api.ImageInspect{}, err
	}
	ctx = e.nsCtx(ctx)
	cfg, err := img.Config(ctx)
	if err != nil {
		return api.ImageInspect{}, err
	}
	spec, err := img.Spec(ctx)
	if err != nil {
		return api.ImageInspect{}, err
	}
	size, _ := img.Size(ctx)
	out := api.ImageInspect{ID: cfg.Digest.String(), Architecture: spec.Architecture, Os: spec.OS, Size: size, Author: spec.Author,
		RootFS: api.RootFS{Type: spec.RootFS.Type}}
	if spec.Created != nil {
		out.Created = spec.Created.Format(time.RFC3339Nano)
	}
	for _, d := range spec.RootFS.DiffIDs {
		out.RootFS.Layers = append(out.RootFS.Layers, d.String())
	}
	c := spec.Config
	out.Config = &api.ContainerConfig{User: c.User, Env: c.Env, Cmd: c.Cmd, Entrypoint: c.Entrypoint, WorkingDir: c.WorkingDir,
		Labels: c.Labels, StopSignal: c.StopSignal}
	all, _ := e.client.ListImages(ctx)
	for _, other := range all {
		if oc, err := other.Config(ctx); err == nil && oc.Digest == cfg.Digest {
			if r, err := reference.ParseNormalizedNamed(other.Name()); err == nil {
				if _, isDigest := r.(reference.Canonical); !isDigest {
					out.RepoTags = append(out.RepoTags, reference.FamiliarString(r))
				}
				out.RepoDigests = append(out.RepoDigests, reference.FamiliarName(r)+"@"+other.Target().Digest.String())
			}
		}
	}
	_ = ref
	return out, nil
}

// RemoveImage answers DELETE /images/{name}: it untags name (every tag of
// the image when name is an image ID) and lets containerd collect the
// content and snapshots nothing references any more. An image that a
// container uses is ErrConflict unless force.
func (e *Engine) RemoveImage(ctx context.Context, name string, force bool) error {
	img, ref, err := e.getImage(ctx, name)
	if err != nil {
		return err
	}
	ctx = e.nsCtx(ctx)
	cfg, err := img.Config(ctx)
	if err != nil {
		return err
	}
	id := cfg.Digest.String()
	if !force {
		e.mu.Lock()
		var user *container
		for _, c := range e.containers {
			if c.ImageID == id {
				user = c
				break
			}
		}
		e.mu.Unlock()
		if user != nil {
			return fmt.Errorf("unable to remove %s: container %s uses it (remove it first, or force): %w", familiar(ref), short(user.ID), ErrConflict)
		}
	}
	names := []string{ref}
	if strings.TrimPrefix(name, "sha256:") != name || strings.HasPrefix(id, "sha256:"+name) {
		names = nil
		all, _ := e.client.ListImages(ctx)
		for _, other := range all {
			if oc, err := other.Config(ctx); err == nil && oc.Digest == cfg.Digest {
				names = append(names, other.Name())
			}
		}
	}
	for i, n := range names {
		var opts []images.DeleteOpt
		if i == len(names)-1 {
			opts = append(opts, images.SynchronousDelete())
		}
		if err := e.client.ImageService().Delete(ctx, n, opts...); err != nil && !cerrdefs.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// imageConfigJSON is used by tests and inspect: the raw OCI config.
func imageConfigJSON(ctx context.Context, img client.Image) (ocispec.Image, error) {
	var out ocispec.Image
	cfg, err := img.Config(ctx)
	if err != nil {
		return out, err
	}
	b, err := content.ReadBlob(ctx, img.ContentStore(), cfg)
	if err != nil {
		return out, err
	}
	return out, json.Unmarshal(b, &out)
}
