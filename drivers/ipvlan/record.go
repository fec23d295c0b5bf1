package ipvlan

import (
	"os"
	"path/filepath"
	"sort"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/internal/recstore"
)

// An ipvlan endpoint has no host-side link: the child lives only inside the
// container's namespace, and a network has no kernel object at all. So, unlike
// the veth drivers, Observe cannot find what is ours by listing the host's
// links; it reads these records instead, one file per object, and then checks
// the kernel. The files are kept by internal/recstore.

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
// <dir>/endpoints/<key>.json.
type records struct {
	dir string
	log *logrus.Entry
}

func (r records) sub(name string) (recstore.Dir, error) {
	return recstore.At(filepath.Join(r.dir, name)), nil
}

func (r records) put(sub, key string, v any) error {
	d, err := r.sub(sub)
	if err != nil {
		return err
	}
	return d.Put(key, v)
}

func (r records) putNet(rec netRecord) error { return r.put("networks", rec.Key, rec) }
func (r records) putEP(rec epRecord) error   { return r.put("endpoints", rec.Key, rec) }

func (r records) del(sub, key string) error {
	d, err := r.sub(sub)
	if err != nil {
		return err
	}
	return d.Del(key)
}

func (r records) delNet(key string) error { return r.del("networks", key) }
func (r records) delEP(key string) error  { return r.del("endpoints", key) }

func (r records) getEP(key string) (epRecord, bool, error) {
	var rec epRecord
	d, err := r.sub("endpoints")
	if err != nil {
		return rec, false, err
	}
	ok, err := d.Get(key, &rec)
	return rec, ok, err
}

// list decodes every record of sub in key order. A file that does not decode
// (edited by hand: our own writes are atomic) is skipped with a warning rather
// than failing every Observe, which would stall the whole host.
func list[T any](r records, sub string, key func(T) string) ([]T, error) {
	d := recstore.At(filepath.Join(r.dir, sub))
	if _, err := os.Stat(filepath.Join(r.dir, sub)); err == nil {
		if d, err = recstore.Open(filepath.Join(r.dir, sub)); err != nil { // also clears a crashed write's temp file
			return nil, err
		}
	}
	out, bad, err := recstore.List[T](d)
	for _, b := range bad {
		r.log.WithError(b).Warn("skipping unreadable ipvlan record")
	}
	sort.Slice(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out, err
}

func (r records) listNets() ([]netRecord, error) {
	return list(r, "networks", func(n netRecord) string { return n.Key })
}

func (r records) listEPs() ([]epRecord, error) {
	return list(r, "endpoints", func(e epRecord) string { return e.Key })
}
