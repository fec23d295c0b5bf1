package ipvlan

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"
)

// An ipvlan endpoint has no host-side link: the child lives only inside the
// container's namespace, and a network has no kernel object at all. So, unlike
// the veth drivers, Observe cannot find what is ours by listing the host's
// links; it reads these records instead, one file per object, and then checks
// the kernel. Every file is replaced atomically (temp file, fsync, rename,
// fsync of the directory), so a crash leaves the old record or the new one,
// never a torn one.

// netRecord is what EnsureNetwork programmed: only the choice of parent and
// mode, which later endpoints and other networks are checked against.
type netRecord struct {
	Key         string `json:"key"`
	Fingerprint string `json:"fingerprint"`
	Parent      string `json:"parent"`
	Mode        string `json:"mode"`
}

// epRecord is one endpoint. It is written before the child is created (IfIndex
// 0), so that a crash right after creating the child still leaves a record
// pointing at the namespace to look in; the child itself carries the alias
// netplugin:ipep:<fingerprint>:<key> that proves it is ours.
type epRecord struct {
	Key         string `json:"key"`
	Net         string `json:"net"`
	Fingerprint string `json:"fingerprint"`
	NetNSPath   string `json:"netnsPath"`
	NetNSID     string `json:"netnsId,omitempty"`
	Parent      string `json:"parent"`
	Mode        string `json:"mode"`
	IP          string `json:"ip"`
	Prefix      int    `json:"prefix"`
	IfName      string `json:"ifName,omitempty"`
	IfIndex     int    `json:"ifIndex,omitempty"`
}

// records is the state directory: <dir>/networks/<key>.json and
// <dir>/endpoints/<key>.json, the key path-escaped ("t%2Fname").
type records struct {
	dir string
	log *logrus.Entry
}

const (
	netsDir  = "networks"
	epsDir   = "endpoints"
	tmpMark  = ".tmp-"
	fileMode = 0o600
)

func (r records) path(sub, key string) string {
	return filepath.Join(r.dir, sub, url.PathEscape(key)+".json")
}

func (r records) putNet(rec netRecord) error { return r.put(netsDir, rec.Key, rec) }
func (r records) putEP(rec epRecord) error   { return r.put(epsDir, rec.Key, rec) }
func (r records) delNet(key string) error    { return r.del(netsDir, key) }
func (r records) delEP(key string) error     { return r.del(epsDir, key) }

func (r records) getEP(key string) (epRecord, bool, error) {
	var rec epRecord
	ok, err := r.get(epsDir, key, &rec)
	return rec, ok, err
}

func (r records) listNets() ([]netRecord, error) {
	var out []netRecord
	err := r.list(netsDir, func(b []byte) error {
		var rec netRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}

func (r records) listEPs() ([]epRecord, error) {
	var out []epRecord
	err := r.list(epsDir, func(b []byte) error {
		var rec epRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}

func (r records) put(sub, key string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record %s: %w", key, err)
	}
	if err := writeAtomic(r.path(sub, key), b); err != nil {
		return fmt.Errorf("write record %s: %w", key, err)
	}
	return nil
}

func (r records) get(sub, key string, v any) (bool, error) {
	b, err := os.ReadFile(r.path(sub, key))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read record %s: %w", key, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("decode record %s: %w", r.path(sub, key), err)
	}
	return true, nil
}

// del removes a record; removing an absent one is success.
func (r records) del(sub, key string) error {
	p := r.path(sub, key)
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove record %s: %w", key, err)
	}
	return syncDir(filepath.Dir(p))
}

// list decodes every record of sub in name order. A file that does not decode
// (edited by hand: our own writes are atomic) is skipped with a warning rather
// than failing every Observe, which would stall the whole host; temp files a
// crash left behind are removed (one agent owns a state dir).
func (r records) list(sub string, decode func([]byte) error) error {
	dir := filepath.Join(r.dir, sub)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list records: %w", err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(dir, name)
		if strings.HasPrefix(name, tmpMark) {
			_ = os.Remove(p)
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read record %s: %w", p, err)
		}
		if err := decode(b); err != nil {
			r.log.WithError(err).WithField("file", p).Warn("skipping unreadable ipvlan record")
		}
	}
	return nil
}

// writeAtomic replaces path with data so that readers and a crash see either
// the old content or the new, never a mix.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, tmpMark+"*")
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
	if err := f.Chmod(fileMode); err != nil {
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
	// The rename itself is durable only once the directory is synced.
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
