package hostnic

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

// records keeps one small JSON file per object in a directory. A write goes to a
// temporary file that is fsynced and renamed over the record, and the directory
// is fsynced, so a crash at any point leaves either the old or the new record,
// never a torn one (the hostnic seed lost its state with a plain WriteFile).
//
// The same ~80 lines live in drivers/macvlan: the two drivers must not depend on
// each other, and the helper is too small for a shared package of its own yet.
type records struct{ dir string }

const recExt = ".json"

func openRecords(dir string) (records, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return records{}, fmt.Errorf("state dir %s: %w", dir, err)
	}
	// A crash between create and rename leaves a temporary file; it was never a record.
	tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp*"))
	for _, t := range tmps {
		_ = os.Remove(t)
	}
	return records{dir: dir}, nil
}

// path escapes the key ("tenant/name") into one file name; keys are names of
// [A-Za-z0-9_.-], so the result stays readable and distinct keys never collide.
func (r records) path(key string) string {
	return filepath.Join(r.dir, url.PathEscape(key)+recExt)
}

func (r records) put(key string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record %s: %w", key, err)
	}
	final := r.path(key)
	f, err := os.CreateTemp(r.dir, "."+filepath.Base(final)+".tmp*")
	if err != nil {
		return fmt.Errorf("write record %s: %w", key, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
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
	return syncDir(r.dir)
}

// get loads the record of key into v and reports whether it exists.
func (r records) get(key string, v any) (bool, error) {
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

func (r records) del(key string) error {
	if err := os.Remove(r.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete record %s: %w", key, err)
	}
	return syncDir(r.dir)
}

// listRecords decodes every record in r. A record that does not decode is
// reported in bad and skipped, so that one damaged file cannot stop the driver.
func listRecords[T any](r records) (out []T, bad []error, err error) {
	ents, err := os.ReadDir(r.dir)
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

// syncDir makes a rename or remove in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
