package nl

import (
	"errors"
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Locks serialises work per key (a namespace, an endpoint) with a fixed set of
// mutexes picked by the key's hash: no map that grows with the keys, and two
// keys rarely share one.
type Locks struct {
	stripes [64]sync.Mutex
}

// Lock locks key's stripe and returns the unlock.
func (l *Locks) Lock(key string) (unlock func()) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	m := &l.stripes[h.Sum32()%uint32(len(l.stripes))]
	m.Lock()
	return m.Unlock
}

// nameRetries bounds the new names tried when someone outside netplugin takes
// the chosen one between the listing and the create.
const nameRetries = 3

// AddNamed creates a link inside the namespace of h (ns names it for the lock)
// under the lowest free "<prefix>N", as Docker names interfaces. The namespace's
// lock is held from the listing until the link exists, so endpoints of one
// container ensured in parallel never pick the same name. add must return an
// error matching unix.EEXIST only when that name was taken in the namespace; the
// next free name is tried then.
func (l *Locks) AddNamed(ns string, h *netlink.Handle, prefix string, add func(name string) error) (string, error) {
	defer l.Lock(ns)()
	var err error
	for attempt := 0; attempt < nameRetries; attempt++ {
		var name string
		if name, err = FreeIfName(h, prefix); err != nil {
			return "", fmt.Errorf("netns %s: %w", ns, err)
		}
		if err = add(name); !errors.Is(err, unix.EEXIST) {
			return name, err
		}
	}
	return "", err
}
