// Package hostconfig points a host's container runtime at the local
// Pouchfly registry mirror: containerd's hosts.toml files
// (certs.d/<registry>/hosts.toml) and Docker's daemon.json
// (registry-mirrors).
//
// Every change is undoable: a file that existed is first copied to
// <file>.pouchfly-backup (once: a later run keeps the first backup), and
// Undo puts the backup back, or removes the file when Pouchfly created it.
// Files are replaced atomically (temp file in the same directory, fsync,
// rename) and keep their mode. A file that does not parse is refused with
// errdefs.ErrInvalid and left untouched. With DryRun nothing is written and
// the returned Changes say what would be done.
//
// The functions are not safe for concurrent use on the same files.
package hostconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// DefaultMirror is the local mirror's URL (the registry proxy of
// `dfget daemon` listens on 127.0.0.1:65001 by default).
const DefaultMirror = "http://127.0.0.1:65001"

// BackupSuffix is appended to a file's name for its backup.
const BackupSuffix = ".pouchfly-backup"

// Action is what a Change does to a file.
type Action string

// The actions.
const (
	Create    Action = "create"    // the file did not exist
	Update    Action = "update"    // the file existed and changes
	Unchanged Action = "unchanged" // the file already says the right thing
	Restore   Action = "restore"   // undo: the backup replaces the file
	Remove    Action = "remove"    // undo: the file Pouchfly created goes
	Nothing   Action = "nothing"   // undo: no backup and not Pouchfly's file
)

// Change is one file's planned or done change.
type Change struct {
	// Path is the file changed.
	Path string
	// Action is what happens to it.
	Action Action
	// Backup is the backup file written (Update), kept (a re-run) or put
	// back (Restore); "" when none.
	Backup string
	// Old and New are the contents before and after; nil means no file.
	Old, New []byte
	// DryRun is set when nothing was written.
	DryRun bool
}

// Diff is a unified diff from Old to New ("" when equal).
func (c Change) Diff() string {
	return UnifiedDiff(c.Path, c.Path, string(c.Old), string(c.New))
}

// String is a one-line summary, e.g. "update /etc/docker/daemon.json
// (backup /etc/docker/daemon.json.pouchfly-backup)"; "would update …" for
// a dry run.
func (c Change) String() string {
	would := ""
	if c.DryRun {
		would = "would "
	}
	switch c.Action {
	case Unchanged:
		return c.Path + ": already up to date"
	case Nothing:
		return c.Path + ": nothing to undo (no backup, and Pouchfly did not create it)"
	case Restore:
		return fmt.Sprintf("%srestore %s from %s", would, c.Path, c.Backup)
	case Remove:
		return fmt.Sprintf("%sremove %s (Pouchfly created it)", would, c.Path)
	}
	s := fmt.Sprintf("%s%s %s", would, c.Action, c.Path)
	if c.Backup != "" {
		s += " (backup " + c.Backup + ")"
	}
	return s
}

// ValidateMirror checks a mirror URL: http or https, a host, no user
// info, query, fragment or path (the form containerd and dockerd accept
// for a mirror endpoint). It returns the URL without a trailing slash.
func ValidateMirror(mirror string) (string, error) {
	u, err := url.Parse(mirror)
	if err != nil {
		return "", fmt.Errorf("mirror %q: %v: %w", mirror, err, errdefs.ErrInvalid)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("mirror %q: want an http:// or https:// URL: %w", mirror, errdefs.ErrInvalid)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("mirror %q: no host: %w", mirror, errdefs.ErrInvalid)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return "", fmt.Errorf("mirror %q: no user info, query or fragment allowed: %w", mirror, errdefs.ErrInvalid)
	case u.Path != "" && u.Path != "/":
		return "", fmt.Errorf("mirror %q: no path allowed (the mirror serves /v2/ at its root): %w", mirror, errdefs.ErrInvalid)
	}
	return u.Scheme + "://" + u.Host, nil
}

// readFile returns the file's content and mode; nil content (and no
// error) when it does not exist.
func readFile(path string) ([]byte, fs.FileMode, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s is not a regular file: %w", path, errdefs.ErrInvalid)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	if data == nil {
		data = []byte{}
	}
	return data, fi.Mode().Perm(), nil
}

// writeAtomic replaces path with data: a temp file in the same directory,
// fsync'd, renamed over path, then the directory fsync'd. The directory is
// created (0755) if needed.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	syncDir(dir)
	return nil
}

// renameAtomic moves from over to and syncs the directory.
func renameAtomic(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	syncDir(filepath.Dir(to))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// fileKind says how apply and undo treat one kind of file.
type fileKind struct {
	// ours tells whether the current file was written by Pouchfly where
	// there was none before (no backup needed, Undo removes it).
	ours func(cur []byte) bool
	// rebuild: compute the new content from the original (the backup, or
	// nothing when the file is ours) rather than from the current file, so
	// a re-run leaves no trace of the previous one. A file changed by
	// someone else since (not ours, with a backup) is then refused.
	rebuild bool
	// build computes the new content from the source (nil: no file).
	build func(src []byte) ([]byte, error)
	// created is called after a file was created where none was, and no
	// backup existed (nil: nothing to record).
	created func() error
	// cleanup is called after Undo restored or removed the file.
	cleanup func() error
}

// apply computes and (unless dryRun) writes path's new content.
func apply(path string, dryRun bool, k fileKind) (Change, error) {
	cur, mode, err := readFile(path)
	if err != nil {
		return Change{}, err
	}
	backup := path + BackupSuffix
	orig, _, err := readFile(backup)
	if err != nil {
		return Change{}, err
	}
	haveBackup := orig != nil
	ours := cur != nil && k.ours(cur)
	src := cur
	if k.rebuild {
		switch {
		case haveBackup:
			if cur != nil && !ours {
				return Change{}, fmt.Errorf("%s was changed by someone else since Pouchfly wrote it, and %s holds "+
					"the file from before: run with --undo first (puts that back), or remove the backup: %w",
					path, backup, errdefs.ErrInvalid)
			}
			src = orig
		case ours:
			src = nil
		}
	}
	next, err := k.build(src)
	if err != nil {
		return Change{}, err
	}
	ch := Change{Path: path, Old: cur, New: next, DryRun: dryRun}
	switch {
	case cur == nil:
		ch.Action = Create
	case bytes.Equal(cur, next):
		ch.Action = Unchanged
	default:
		ch.Action = Update
	}
	needBackup := !haveBackup && cur != nil && !ours && ch.Action != Unchanged
	if haveBackup || needBackup {
		ch.Backup = backup
	}
	if dryRun || ch.Action == Unchanged {
		return ch, nil
	}
	if mode == 0 {
		mode = 0o644
	}
	if needBackup {
		if err := writeAtomic(backup, cur, mode); err != nil {
			return Change{}, fmt.Errorf("back up %s: %w", path, err)
		}
	}
	if err := writeAtomic(path, next, mode); err != nil {
		return Change{}, fmt.Errorf("write %s: %w", path, err)
	}
	if cur == nil && !haveBackup && k.created != nil {
		if err := k.created(); err != nil {
			return Change{}, err
		}
	}
	return ch, nil
}

// undo puts path's backup back, or removes path if it is ours.
func undo(path string, dryRun bool, k fileKind) (Change, error) {
	cur, _, err := readFile(path)
	if err != nil {
		return Change{}, err
	}
	backup := path + BackupSuffix
	orig, _, err := readFile(backup)
	if err != nil {
		return Change{}, err
	}
	ch := Change{Path: path, Old: cur, New: cur, DryRun: dryRun}
	switch {
	case orig != nil:
		ch.Action, ch.New, ch.Backup = Restore, orig, backup
		if !dryRun {
			if err := renameAtomic(backup, path); err != nil {
				return Change{}, fmt.Errorf("restore %s: %w", path, err)
			}
		}
	case cur != nil && k.ours(cur):
		ch.Action, ch.New = Remove, nil
		if !dryRun {
			if err := os.Remove(path); err != nil {
				return Change{}, fmt.Errorf("remove %s: %w", path, err)
			}
			syncDir(filepath.Dir(path))
		}
	default:
		ch.Action = Nothing
	}
	if !dryRun && k.cleanup != nil && ch.Action != Nothing {
		if err := k.cleanup(); err != nil {
			return Change{}, err
		}
	}
	return ch, nil
}
