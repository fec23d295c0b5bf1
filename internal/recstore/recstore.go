// Package recstore keeps the records drivers write about what they programmed
// inside containers (where the host cannot list it): one small JSON file per
// object in a directory.
//
// A write goes to a temporary file renamed over the record, so a crash of the
// agent at any point leaves the old record or the new one, never a torn one (the
// hostnic seed lost its state with a plain WriteFile). Writes are not fsynced:
// a process crash loses nothing that reached the page cache, and what the
// records describe — namespaces and the links in them — does not survive a
// machine crash either. Syncing cost more than the kernel work per endpoint.
package recstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// Dir is a directory of records.
type Dir struct{ dir string }

const recExt = ".json"

// Open makes the directory if needed and clears temporary files of a crashed write.
func Open(dir string) (Dir, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Dir{}, fmt.Errorf("state dir %s: %w", dir, err)
	}
	// A crash between create and rename leaves a temporary file; it was never a record.
	tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp*"))
	for _, t := range tmps {
		_ = os.Remove(t)
	}
	return Dir{dir: dir}, nil
}

// path escapes the key ("tenant/name") into one file name; keys are names of
// [A-Za-z0-9_.-], so the result stays readable and distinct keys never collide.
func (r Dir) path(key string) string {
	return filepath.Join(r.dir, url.PathEscape(key)+recExt)
}

// At is the directory dir without touching the disk; Put creates it.
func At(dir string) Dir { return Dir{dir: dir} }

// Put writes the record of key.
func (r Dir) Put(key string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record %s: %w", key, err)
	}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", r.dir, err)
	}
	final := r.path(key)
	f, err := os.CreateTemp(r.dir, "."+filepath.Base(final)+".tmp*")
	if err != nil {
		return fmt.Errorf("write record %s: %w", key, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write record %s: %w", key, err)
	}
	return nil
}

// Get loads the record of key into v and reports whether it exists.
func (r Dir) Get(key string, v any) (bool, error) {
	b, err := os.ReadFile(r.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read record %s: %w", key, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("decode record %s: %w", r.path(key), err)
	}
	return true, nil
}

// Del removes the record of key; an absent record is fine.
func (r Dir) Del(key string) error {
	if err := os.Remove(r.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete record %s: %w", key, err)
	}
	return nil
}

// List decodes every record in r. A record that does not decode is reported in
// bad and skipped, so that one damaged file cannot stop the driver.
func List[T any](r Dir) (out []T, bad []error, err error) {
	ents, err := os.ReadDir(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil // nothing recorded yet
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list records in %s: %w", r.dir, err)
	}
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, recExt) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since ReadDir
		}
		var v T
		if err == nil {
			err = json.Unmarshal(b, &v)
		}
		if err != nil {
			bad = append(bad, fmt.Errorf("record %s: %w", filepath.Join(r.dir, name), err))
			continue
		}
		out = append(out, v)
	}
	return out, bad, nil
}
