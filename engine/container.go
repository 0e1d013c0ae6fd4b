package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pouchfly/pouchfly/engine/api"
	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// mountRecord is one mount of a container, as persisted.
type mountRecord struct {
	api.MountPoint
	// QuotaDir is the directory limited for this mount ("" if none).
	QuotaDir string `json:",omitempty"`
	// Created is set for a volume this container created implicitly.
	Created bool `json:",omitempty"`
}

// containerMeta is what containers/<id>/config.json holds.
type containerMeta struct {
	ID         string
	Name       string
	Created    time.Time
	Image      string // normalized reference
	ImageID    string // config digest
	Path       string
	Args       []string
	Config     api.ContainerConfig
	HostConfig api.HostConfig
	Runtime    string
	// Snapshotter and SnapshotKey name the rootfs snapshot.
	Snapshotter string
	SnapshotKey string
	// RootfsQuotaDir is the snapshot directory limited by the quota
	// driver, RootfsQuota its size (0: none).
	RootfsQuotaDir string `json:",omitempty"`
	RootfsQuota    int64  `json:",omitempty"`
	Mounts         []mountRecord
	State          api.ContainerState
	RestartCount   int
	// ManualStop is set by stop/kill and cleared by start: a stopped
	// container is not restarted by its policy.
	ManualStop bool
}

// container is a container's metadata plus its live state. mu guards
// everything; the engine's mu guards the maps only.
type container struct {
	mu  sync.Mutex
	dir string
	containerMeta

	// Live state (not persisted).
	run      *runState     // the current run (nil when not running)
	exited   chan struct{} // closed and replaced at every exit
	running  chan struct{} // closed when a run begins, replaced at its exit
	removed  chan struct{} // closed when the container is removed
	subs     subscribers   // attached clients waiting for output
	starting bool
	removing bool
	restartT *time.Timer
	// ttySize is a TTY size (width, height) asked for while the container
	// was not running: the next start applies it before the process runs.
	ttySize *[2]uint32
	// rootfsReleased is closed when the last run's rootfs hold is gone
	// (nil: nothing to wait for); the next start waits for it.
	rootfsReleased chan struct{}
}

func newContainer(dir string, m containerMeta) *container {
	return &container{dir: dir, containerMeta: m, exited: make(chan struct{}), removed: make(chan struct{}), running: make(chan struct{})}
}

// setRunLocked records the current run (nil: none) and wakes those
// waiting for one to begin. c.mu is held.
func (c *container) setRunLocked(r *runState) {
	c.run = r
	select {
	case <-c.running:
		if r == nil {
			c.running = make(chan struct{})
		}
	default:
		if r != nil {
			close(c.running)
		}
	}
}

// status is Docker's State string.
func (c *container) status() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.statusLocked()
}

func (c *container) statusLocked() string {
	switch {
	case c.removing:
		return "removing"
	case c.State.Restarting:
		return "restarting"
	case c.State.Running:
		return "running"
	case c.State.Dead:
		return "dead"
	case c.State.StartedAt.IsZero():
		return "created"
	}
	return "exited"
}

// saveLocked writes config.json atomically.
func (c *container) saveLocked() error {
	c.State.Status = c.statusLocked()
	b, err := json.MarshalIndent(&c.containerMeta, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.dir, "config.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(c.dir, "config.json"))
}

func (c *container) logPath() string { return filepath.Join(c.dir, "json.log") }

func loadMeta(dir string) (containerMeta, error) {
	var m containerMeta
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return m, err
	}
	return m, json.Unmarshal(b, &m)
}

// newID returns a 64-hex container or exec ID.
func newID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// get finds a container by ID, ID prefix (unique) or name.
func (e *Engine) get(ref string) (*container, error) {
	ref = strings.TrimPrefix(ref, "/")
	e.mu.Lock()
	defer e.mu.Unlock()
	if ref == "" {
		return nil, fmt.Errorf("no container named: %w", errdefs.ErrInvalid)
	}
	if c, ok := e.containers[ref]; ok {
		return c, nil
	}
	if id, ok := e.names[ref]; ok {
		return e.containers[id], nil
	}
	var found *container
	for id, c := range e.containers {
		if strings.HasPrefix(id, ref) {
			if found != nil {
				return nil, fmt.Errorf("multiple containers match %q: %w", ref, errdefs.ErrInvalid)
			}
			found = c
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no such container: %s: %w", ref, errdefs.ErrNotFound)
	}
	return found, nil
}

// reserveName claims name for id (ErrConflict if taken).
func (e *Engine) reserveName(name, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if other, ok := e.names[name]; ok {
		return fmt.Errorf("the container name %q is already in use by container %s; remove or rename it: %w", name, short(other), ErrConflict)
	}
	e.names[name] = id
	return nil
}

func (e *Engine) releaseName(name, id string) {
	e.mu.Lock()
	if e.names[name] == id {
		delete(e.names, name)
	}
	e.mu.Unlock()
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

var adjectives = []string{"brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lucid", "merry", "nifty", "proud", "quiet", "sharp", "witty", "zen"}
var nouns = []string{"pouch", "fly", "kangaroo", "wallaby", "koala", "wombat", "possum", "dingo", "emu", "quokka", "numbat", "bilby"}

func randomName(id string) string {
	b, _ := hex.DecodeString(id[:4])
	return fmt.Sprintf("%s_%s_%s", adjectives[int(b[0])%len(adjectives)], nouns[int(b[1])%len(nouns)], id[:6])
}

// List answers GET /containers/json.
func (e *Engine) List(ctx context.Context, all bool) []api.Container {
	e.mu.Lock()
	cs := make([]*container, 0, len(e.containers))
	for _, c := range e.containers {
		cs = append(cs, c)
	}
	e.mu.Unlock()
	out := []api.Container{}
	for _, c := range cs {
		c.mu.Lock()
		st := c.statusLocked()
		if !all && st != "running" && st != "restarting" {
			c.mu.Unlock()
			continue
		}
		out = append(out, api.Container{
			ID: c.ID, Names: []string{"/" + c.Name}, Image: c.Config.Image, ImageID: c.ImageID,
			Command: strings.Join(append([]string{c.Path}, c.Args...), " "), Created: c.Created.Unix(),
			State: st, Status: statusText(c), Runtime: c.Runtime, Labels: c.Config.Labels,
		})
		c.mu.Unlock()
	}
	sortContainers(out)
	return out
}

func sortContainers(cs []api.Container) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].Created > cs[j-1].Created; j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}

// statusText is Docker's human Status column ("Up 3 minutes", "Exited (0)
// 2 seconds ago").
func statusText(c *container) string {
	switch c.statusLocked() {
	case "running":
		return "Up " + humanDuration(time.Since(c.State.StartedAt))
	case "restarting":
		return fmt.Sprintf("Restarting (%d) %s ago", c.State.ExitCode, humanDuration(time.Since(c.State.FinishedAt)))
	case "created":
		return "Created"
	case "removing":
		return "Removal In Progress"
	case "dead":
		return "Dead"
	}
	return fmt.Sprintf("Exited (%d) %s ago", c.State.ExitCode, humanDuration(time.Since(c.State.FinishedAt)))
}

func humanDuration(d time.Duration) string {
	switch s := int(d.Seconds()); {
	case s < 1:
		return "Less than a second"
	case s == 1:
		return "1 second"
	case s < 60:
		return fmt.Sprintf("%d seconds", s)
	case s < 120:
		return "About a minute"
	case s < 3600:
		return fmt.Sprintf("%d minutes", s/60)
	case s < 7200:
		return "About an hour"
	case s < 48*3600:
		return fmt.Sprintf("%d hours", s/3600)
	default:
		return fmt.Sprintf("%d days", s/86400)
	}
}

// Inspect answers GET /containers/{id}/json.
func (e *Engine) Inspect(ctx context.Context, ref string) (api.ContainerJSON, error) {
	c, err := e.get(ref)
	if err != nil {
		return api.ContainerJSON{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.State
	st.Status = c.statusLocked()
	j := api.ContainerJSON{
		ID: c.ID, Created: c.Created, Path: c.Path, Args: c.Args, State: st, Image: c.ImageID, Name: "/" + c.Name,
		RestartCount: c.RestartCount, LogPath: c.logPath(), Snapshotter: c.Snapshotter, SnapshotKey: c.SnapshotKey,
		HostConfig: c.HostConfig, Config: c.Config,
	}
	if c.RootfsQuota > 0 {
		j.RootfsQuota = formatSize(c.RootfsQuota)
	}
	for _, m := range c.Mounts {
		j.Mounts = append(j.Mounts, m.MountPoint)
	}
	return j, nil
}
