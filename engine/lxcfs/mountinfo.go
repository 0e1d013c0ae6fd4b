package lxcfs

import "github.com/pouchfly/pouchfly/internal/mountinfo"

// mountEntry is one line of /proc/<pid>/mountinfo.
type mountEntry = mountinfo.Entry

func readMountinfo(path string) ([]mountEntry, error) { return mountinfo.Read(path) }

func mountAt(mounts []mountEntry, mp string) (mountEntry, bool) { return mountinfo.At(mounts, mp) }
