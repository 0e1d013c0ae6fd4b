// Package api is pouchd's HTTP API: the wire types (JSON bodies in the
// style of Docker's v1.24 API, with PouchContainer's extensions), the
// stream framing of attach/exec, and a Go client (used by the pouch CLI
// and the tests). It imports nothing of the engine, so clients stay small.
package api

import "time"

// Version is GET /version.
type Version struct {
	Version       string
	APIVersion    string `json:"ApiVersion"`
	GoVersion     string
	Os            string
	Arch          string
	KernelVersion string
	BuildTime     string `json:",omitempty"`
	// Containerd is the version of the containerd pouchd drives.
	Containerd string `json:",omitempty"`
}

// Runtime is one OCI runtime pouchd can run containers with.
type Runtime struct {
	// Path of the runtime binary (runc-compatible command line).
	Path string `json:"path"`
	// Args are extra arguments given to the runtime.
	Args []string `json:"runtimeArgs,omitempty"`
}

// Info is GET /info.
type Info struct {
	ID                string
	Name              string
	ServerVersion     string
	Containers        int
	ContainersRunning int
	ContainersPaused  int
	ContainersStopped int
	Images            int
	// Driver is the containerd snapshotter that holds image layers and
	// container root filesystems.
	Driver          string
	CgroupDriver    string
	CgroupVersion   string
	KernelVersion   string
	OperatingSystem string
	OSType          string
	Architecture    string
	NCPU            int
	MemTotal        int64
	// PouchRootDir is pouchd's home.
	PouchRootDir      string
	ContainerdVersion string
	ContainerdAddress string
	ContainerdPID     int
	// ContainerdAdopted is true when pouchd found its containerd running
	// (started by an earlier pouchd) instead of starting it.
	ContainerdAdopted  bool
	ContainerdRestarts int
	Runtimes           map[string]Runtime
	DefaultRuntime     string
	// RegistryMirror is the local agent's registry mirror every pull goes
	// through first.
	RegistryMirror string
	// QuotaDriver is the disk quota driver (e.g. "loop", "prjquota"), or
	// "" when disk quota is unavailable.
	QuotaDriver string
	// LxcfsEnabled is true when pouchd supervises lxcfs; LxcfsStatus says
	// how it is doing (mount point, restarts, or why it is off).
	LxcfsEnabled bool
	LxcfsStatus  string
	// RichInit is the pouch-init binary used by --rich ("" if missing).
	RichInit string
}

// ImageSummary is one element of GET /images/json.
type ImageSummary struct {
	ID          string `json:"Id"`
	RepoTags    []string
	RepoDigests []string
	Created     int64
	Size        int64
}

// RootFS lists an image's layers (diff IDs).
type RootFS struct {
	Type   string
	Layers []string
}

// ImageInspect is GET /images/{name}/json.
type ImageInspect struct {
	ID           string `json:"Id"`
	RepoTags     []string
	RepoDigests  []string
	Created      string
	Author       string `json:",omitempty"`
	Architecture string
	Os           string
	Size         int64
	Config       *ContainerConfig
	RootFS       RootFS
}

// JSONProgress is the progress of one layer in a pull stream.
type JSONProgress struct {
	Current int64 `json:"current,omitempty"`
	Total   int64 `json:"total,omitempty"`
}

// JSONError is the error at the end of a failed stream.
type JSONError struct {
	Code    int    `json:"code,omitempty"`
	Message string `json:"message"`
}

// JSONMessage is one line of the POST /images/create stream: a status
// (per layer when ID is set), its progress, or a final error.
type JSONMessage struct {
	Status   string        `json:"status,omitempty"`
	Progress *JSONProgress `json:"progressDetail,omitempty"`
	ID       string        `json:"id,omitempty"`
	Error    *JSONError    `json:"errorDetail,omitempty"`
	// ErrorMessage repeats Error.Message (Docker clients read either).
	ErrorMessage string `json:"error,omitempty"`
}

// ContainerConfig is the portable part of a container's configuration
// (Docker's Config), with PouchContainer's rich-container fields.
type ContainerConfig struct {
	Hostname     string            `json:",omitempty"`
	User         string            `json:",omitempty"`
	AttachStdin  bool              `json:",omitempty"`
	AttachStdout bool              `json:",omitempty"`
	AttachStderr bool              `json:",omitempty"`
	Tty          bool              `json:",omitempty"`
	OpenStdin    bool              `json:",omitempty"`
	StdinOnce    bool              `json:",omitempty"`
	Env          []string          `json:",omitempty"`
	Cmd          []string          `json:",omitempty"`
	Entrypoint   []string          `json:",omitempty"`
	Image        string            `json:",omitempty"`
	WorkingDir   string            `json:",omitempty"`
	Labels       map[string]string `json:",omitempty"`
	StopSignal   string            `json:",omitempty"`
	StopTimeout  *int              `json:",omitempty"`
	// Rich runs the container as a rich container: a proper init as PID 1
	// (RichMode: dumb-init, sbin-init or systemd), InitScript run inside
	// before the command.
	Rich       bool   `json:",omitempty"`
	RichMode   string `json:",omitempty"`
	InitScript string `json:",omitempty"`
	// DiskQuota is PouchContainer's --disk-quota: "10g" (rootfs and every
	// volume), "/=10g", "/data=20g", ".*=10g" (entries joined with ";" or
	// given one per element).
	DiskQuota []string `json:",omitempty"`
}

// RestartPolicy is --restart: "no", "always", "unless-stopped" or
// "on-failure" (with MaximumRetryCount).
type RestartPolicy struct {
	Name              string `json:",omitempty"`
	MaximumRetryCount int    `json:",omitempty"`
}

// Resources are a container's cgroup limits.
type Resources struct {
	// Memory limit in bytes (0: none).
	Memory int64 `json:",omitempty"`
	// MemorySwap is memory+swap in bytes (0: unset, -1: unlimited).
	MemorySwap int64 `json:",omitempty"`
	// NanoCPUs is the CPU quota in 1e-9 CPUs (--cpus 1.5 → 1.5e9).
	NanoCPUs int64 `json:",omitempty"`
	// CPUShares is the relative CPU weight.
	CPUShares int64 `json:"CpuShares,omitempty"`
	// PidsLimit caps the number of processes (0: none).
	PidsLimit int64 `json:",omitempty"`
}

// HostConfig is the host-dependent part of a container's configuration.
type HostConfig struct {
	// Binds are -v entries: "VOLUME:/path[:ro]" or "/host/path:/path[:ro]".
	Binds         []string `json:",omitempty"`
	RestartPolicy RestartPolicy
	AutoRemove    bool `json:",omitempty"`
	Privileged    bool `json:",omitempty"`
	// Runtime names one of the runtimes in pouchd's config ("" = default).
	Runtime string `json:",omitempty"`
	// EnableLxcfs binds lxcfs's /proc files over the container's.
	EnableLxcfs bool `json:",omitempty"`
	// ConsoleSize is the initial size of the container's TTY, [height,
	// width] (Docker API 1.42): the pseudo-terminal has this size before
	// the process starts, so a command that asks at once (stty size)
	// sees it. Ignored without Tty; nil or zeros leave the size unset.
	ConsoleSize *[2]uint `json:",omitempty"`
	Resources
}

// ContainerCreateRequest is the body of POST /containers/create.
type ContainerCreateRequest struct {
	ContainerConfig
	HostConfig *HostConfig `json:",omitempty"`
}

// ContainerCreateResponse answers POST /containers/create.
type ContainerCreateResponse struct {
	ID       string `json:"Id"`
	Warnings []string
}

// Container is one element of GET /containers/json.
type Container struct {
	ID      string `json:"Id"`
	Names   []string
	Image   string
	ImageID string
	Command string
	Created int64
	// State is created, running, exited, restarting or removing.
	State  string
	Status string
	// Runtime is the container's OCI runtime name.
	Runtime string
	Labels  map[string]string `json:",omitempty"`
}

// ContainerState is the State of GET /containers/{id}/json.
type ContainerState struct {
	Status     string
	Running    bool
	Paused     bool
	Restarting bool
	OOMKilled  bool
	Dead       bool
	Pid        int
	ExitCode   int
	Error      string
	StartedAt  time.Time
	FinishedAt time.Time
}

// MountPoint is one mount of GET /containers/{id}/json.
type MountPoint struct {
	// Type is "volume" or "bind".
	Type        string
	Name        string `json:",omitempty"`
	Source      string
	Destination string
	Driver      string `json:",omitempty"`
	RW          bool
	// Quota is the size limit of a volume's directory ("" if none).
	Quota string `json:",omitempty"`
}

// ContainerJSON is GET /containers/{id}/json.
type ContainerJSON struct {
	ID           string `json:"Id"`
	Created      time.Time
	Path         string
	Args         []string
	State        ContainerState
	Image        string
	Name         string
	RestartCount int
	LogPath      string
	// Snapshotter and SnapshotKey name the container's root filesystem in
	// containerd; RootfsQuota is its size limit ("" if none).
	Snapshotter string
	SnapshotKey string
	RootfsQuota string `json:",omitempty"`
	HostConfig  HostConfig
	Config      ContainerConfig
	Mounts      []MountPoint
}

// WaitResponse answers POST /containers/{id}/wait.
type WaitResponse struct {
	StatusCode int
	Error      *JSONError `json:",omitempty"`
}

// ExecConfig is the body of POST /containers/{id}/exec.
type ExecConfig struct {
	User         string   `json:",omitempty"`
	Privileged   bool     `json:",omitempty"`
	Tty          bool     `json:",omitempty"`
	AttachStdin  bool     `json:",omitempty"`
	AttachStdout bool     `json:",omitempty"`
	AttachStderr bool     `json:",omitempty"`
	Detach       bool     `json:",omitempty"`
	Env          []string `json:",omitempty"`
	WorkingDir   string   `json:",omitempty"`
	Cmd          []string
	// ConsoleSize is the initial size of the exec's TTY, [height, width]
	// (Docker API 1.42); see HostConfig.ConsoleSize.
	ConsoleSize *[2]uint `json:",omitempty"`
}

// IDResponse answers POST /containers/{id}/exec.
type IDResponse struct {
	ID string `json:"Id"`
}

// ExecStartConfig is the body of POST /exec/{id}/start.
type ExecStartConfig struct {
	Detach bool `json:",omitempty"`
	Tty    bool `json:",omitempty"`
}

// ExecInspect is GET /exec/{id}/json.
type ExecInspect struct {
	ID          string `json:"ID"`
	ContainerID string
	Running     bool
	ExitCode    *int
	Pid         int
	Config      ExecConfig
}

// Volume is a named volume.
type Volume struct {
	Name       string
	Driver     string
	Mountpoint string
	CreatedAt  string            `json:",omitempty"`
	Labels     map[string]string `json:",omitempty"`
	Options    map[string]string `json:",omitempty"`
	Scope      string
	// Status holds driver details (size limit, quota driver, usage).
	Status map[string]string `json:",omitempty"`
}

// VolumeCreateRequest is the body of POST /volumes/create.
type VolumeCreateRequest struct {
	Name       string
	Driver     string            `json:",omitempty"`
	DriverOpts map[string]string `json:",omitempty"`
	Labels     map[string]string `json:",omitempty"`
}

// VolumeList answers GET /volumes.
type VolumeList struct {
	Volumes  []*Volume
	Warnings []string
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Message string `json:"message"`
}

// Version of this API (reported by /version; paths may be prefixed by
// /v1.24 and the like, which pouchd ignores).
const APIVersion = "1.24"
