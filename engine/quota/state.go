package quota

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// loopEntry is the loop driver's record of one quota.
type loopEntry struct {
	Dir       string    `json:"dir"`
	Size      int64     `json:"size"`       // the limit asked for
	ImageSize int64     `json:"image_size"` // the backing file (size + ext4 overhead)
	Ready     bool      `json:"ready"`      // false while Limit is making it
	Created   time.Time `json:"created"`
}

// loopState is <root>/quota/loop.json: image ID → entry.
type loopState struct {
	Version int                   `json:"version"`
	Entries map[string]*loopEntry `json:"entries"`
}

// readJSON loads path into v; a missing file leaves v untouched.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// writeJSON replaces path atomically (temp file, fsync, rename, fsync dir).
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
