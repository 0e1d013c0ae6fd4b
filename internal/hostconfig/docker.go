package hostconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"strings"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// DefaultDaemonJSON is dockerd's configuration file.
const DefaultDaemonJSON = "/etc/docker/daemon.json"

// CreatedSuffix names the empty file beside daemon.json that records that
// Pouchfly created daemon.json (JSON has no comments to say so inside).
const CreatedSuffix = ".pouchfly-created"

const mirrorsKey = "registry-mirrors"

// DockerOptions configures Docker and UndoDocker.
type DockerOptions struct {
	// DaemonJSON is dockerd's config file (default DefaultDaemonJSON).
	DaemonJSON string
	// Mirror is the local mirror's URL (default DefaultMirror).
	Mirror string
	// DryRun computes the change without writing anything.
	DryRun bool
}

func (o *DockerOptions) normalize() error {
	if o.DaemonJSON == "" {
		o.DaemonJSON = DefaultDaemonJSON
	}
	if o.Mirror == "" {
		o.Mirror = DefaultMirror
	}
	m, err := ValidateMirror(o.Mirror)
	if err != nil {
		return err
	}
	o.Mirror = m
	return nil
}

func dockerKind(o DockerOptions) fileKind {
	created := o.DaemonJSON + CreatedSuffix
	return fileKind{
		ours: func([]byte) bool {
			_, err := os.Stat(created)
			return err == nil
		},
		build: func(src []byte) ([]byte, error) { return mergeDaemonJSON(src, o.Mirror, o.DaemonJSON) },
		created: func() error {
			if err := writeAtomic(created, nil, 0o644); err != nil {
				return fmt.Errorf("record that Pouchfly created %s: %w", o.DaemonJSON, err)
			}
			return nil
		},
		cleanup: func() error {
			if err := os.Remove(created); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		},
	}
}

// Docker puts Mirror first in daemon.json's registry-mirrors, keeping
// every other key as written and the other mirrors in their order
// (daemon.json is created if missing; a file that is not a JSON object is
// refused, untouched). dockerd uses registry-mirrors for Docker Hub images
// only, and reads it again on SIGHUP.
func Docker(opts DockerOptions) (Change, error) {
	if err := opts.normalize(); err != nil {
		return Change{}, err
	}
	ch, err := apply(opts.DaemonJSON, opts.DryRun, dockerKind(opts))
	if err != nil {
		return Change{}, fmt.Errorf("docker: %w", err)
	}
	return ch, nil
}

// UndoDocker puts back daemon.json from its backup, or removes it when
// Pouchfly created it and it holds nothing else than registry-mirrors.
func UndoDocker(opts DockerOptions) (Change, error) {
	if err := opts.normalize(); err != nil {
		return Change{}, err
	}
	k := dockerKind(opts)
	if _, err := os.Stat(opts.DaemonJSON + BackupSuffix); errors.Is(err, fs.ErrNotExist) && k.ours(nil) {
		if cur, _, err := readFile(opts.DaemonJSON); err == nil && cur != nil {
			members, err := parseObject(cur)
			if err != nil || len(members) > 1 || (len(members) == 1 && members[0].key != mirrorsKey) {
				return Change{}, fmt.Errorf("docker: Pouchfly created %s but it now holds other settings; "+
					"not removing it: take out %s by hand and delete %s: %w",
					opts.DaemonJSON, mirrorsKey, opts.DaemonJSON+CreatedSuffix, errdefs.ErrInvalid)
			}
		}
	}
	ch, err := undo(opts.DaemonJSON, opts.DryRun, k)
	if err != nil {
		return Change{}, fmt.Errorf("docker: %w", err)
	}
	return ch, nil
}

type member struct {
	key        string
	raw        json.RawMessage
	keyStart   int // offset of the key's opening quote
	start, end int // offsets of the value
}

// parseObject reads a JSON object's members in order with their offsets.
func parseObject(data []byte) ([]member, error) {
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("not a JSON object")
	}
	var out []member
	for dec.More() {
		before := int(dec.InputOffset())
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		end := int(dec.InputOffset())
		ks := before + bytes.IndexByte(data[before:], '"')
		out = append(out, member{key: key, raw: raw, keyStart: ks, start: end - len(raw), end: end})
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the JSON object")
	}
	return out, nil
}

// mergeDaemonJSON returns src with mirror first in registry-mirrors,
// changing nothing else in the text.
func mergeDaemonJSON(src []byte, mirror, path string) ([]byte, error) {
	invalid := func(why string, args ...any) error {
		return fmt.Errorf("%s: "+why+"; refusing to change it: %w", append(append([]any{path}, args...), errdefs.ErrInvalid)...)
	}
	if len(bytes.TrimSpace(src)) == 0 {
		src = nil
	}
	if src == nil {
		return fmt.Appendf(nil, "{\n  %q: %s\n}\n", mirrorsKey, formatList([]string{mirror}, "  ", "  ")), nil
	}
	members, err := parseObject(src)
	if err != nil {
		return nil, invalid("%v", err)
	}
	idx := -1
	var mirrors []string
	for i, m := range members {
		if m.key != mirrorsKey {
			continue
		}
		if idx >= 0 {
			return nil, invalid("%q appears twice", mirrorsKey)
		}
		idx = i
		if err := json.Unmarshal(m.raw, &mirrors); err != nil {
			return nil, invalid("%q is not a list of URLs", mirrorsKey)
		}
	}
	next := []string{mirror}
	for _, m := range mirrors {
		if strings.TrimSuffix(m, "/") != mirror {
			next = append(next, m)
		}
	}

	var out []byte
	switch {
	case idx >= 0:
		m := members[idx]
		indent := lineIndent(src, m.keyStart)
		list := formatList(next, indent, unitIndent(indent))
		if bytes.IndexByte(m.raw, '\n') < 0 && bytes.IndexByte(src[:m.start], '\n') < 0 {
			list = oneLineList(next) // a one-line object stays one line
		}
		out = append(append(append([]byte{}, src[:m.start]...), list...), src[m.end:]...)
	case len(members) == 0:
		closing := bytes.LastIndexByte(src, '}')
		out = append(append(append([]byte{}, bytes.TrimRight(src[:closing], " \t\r\n")...),
			fmt.Appendf(nil, "\n  %q: %s\n", mirrorsKey, formatList(next, "  ", "  "))...), src[closing:]...)
	default:
		last := members[len(members)-1]
		indent := lineIndent(src, last.keyStart)
		var ins []byte
		if bytes.IndexByte(src[:last.end], '\n') < 0 { // a one-line object
			ins = fmt.Appendf(nil, ", %q: %s", mirrorsKey, oneLineList(next))
		} else {
			ins = fmt.Appendf(nil, ",\n%s%q: %s", indent, mirrorsKey, formatList(next, indent, unitIndent(indent)))
		}
		out = append(append(append([]byte{}, src[:last.end]...), ins...), src[last.end:]...)
	}

	// Every other key must read back the same.
	var before, after map[string]any
	if err := json.Unmarshal(src, &before); err != nil {
		return nil, invalid("%v", err)
	}
	if err := json.Unmarshal(out, &after); err != nil {
		return nil, fmt.Errorf("%s: merging failed (%v): %w", path, err, errdefs.ErrInvalid)
	}
	delete(before, mirrorsKey)
	got, _ := after[mirrorsKey].([]any)
	delete(after, mirrorsKey)
	if !reflect.DeepEqual(before, after) || len(got) != len(next) || got[0] != mirror {
		return nil, fmt.Errorf("%s: merging failed: %w", path, errdefs.ErrInvalid)
	}
	return out, nil
}

// lineIndent is the whitespace that starts the line holding offset.
func lineIndent(src []byte, off int) string {
	start := bytes.LastIndexByte(src[:off], '\n') + 1
	i := start
	for i < off && (src[i] == ' ' || src[i] == '\t') {
		i++
	}
	return string(src[start:i])
}

// unitIndent guesses one level of indentation from a member's indentation.
func unitIndent(memberIndent string) string {
	if memberIndent == "" {
		return "  "
	}
	return memberIndent
}

// formatList formats a list of strings over several lines: items at
// indent+unit, the closing bracket at indent.
func formatList(items []string, indent, unit string) []byte {
	var b bytes.Buffer
	b.WriteString("[\n")
	for i, it := range items {
		b.WriteString(indent + unit)
		b.WriteString(jsonString(it))
		if i < len(items)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString(indent + "]")
	return b.Bytes()
}

// oneLineList formats a list of strings on one line.
func oneLineList(items []string) []byte {
	q := make([]string, len(items))
	for i, it := range items {
		q[i] = jsonString(it)
	}
	return []byte("[" + strings.Join(q, ", ") + "]")
}

// jsonString quotes s as JSON without HTML escaping.
func jsonString(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}
