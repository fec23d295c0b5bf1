// Package recdriver is a driver that programs nothing and remembers what it
// was asked: for tests and benchmarks of the control plane (fan-out, mirror,
// reconcile loop), never to claim that a dataplane works.
package recdriver

import (
	"context"
	"errors"
	"sync"

	"github.com/netplugin/netplugin/core"
)

// Name is the driver's name in networks that use it.
const Name = "rec"

// Driver records; the zero value is not usable, use New.
type Driver struct {
	mu      sync.Mutex
	nets    map[string]core.ObservedNetwork
	eps     map[string]core.ObservedEndpoint
	remotes map[string]core.NetRemotes
	// calls is how many remote endpoints each SetRemotes gave, per network.
	calls   []map[string]int
	ensured int
	// fail, when set, makes Observe fail (a driver that cannot work).
	fail error
}

// New returns an empty recording driver.
func New() *Driver {
	return &Driver{nets: map[string]core.ObservedNetwork{}, eps: map[string]core.ObservedEndpoint{}, remotes: map[string]core.NetRemotes{}}
}

// Name implements core.Driver.
func (d *Driver) Name() string { return Name }

// EnsureNetwork implements core.Driver.
func (d *Driver) EnsureNetwork(_ context.Context, n core.NetworkSpec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nets[n.Key()] = core.ObservedNetwork{Key: n.Key(), Fingerprint: n.Fingerprint()}
	return nil
}

// RemoveNetwork implements core.Driver.
func (d *Driver) RemoveNetwork(_ context.Context, n core.ObservedNetwork) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.nets, n.Key)
	return nil
}

// EnsureEndpoint implements core.Driver.
func (d *Driver) EnsureEndpoint(_ context.Context, ep core.EndpointSpec) (core.ObservedEndpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	o := core.ObservedEndpoint{Key: ep.Key(), Fingerprint: ep.Fingerprint(), IfName: core.HostIfName(ep.Key()), IfIndex: len(d.eps) + 1, Healthy: true}
	d.eps[ep.Key()] = o
	d.ensured++
	return o, nil
}

// RemoveEndpoint implements core.Driver.
func (d *Driver) RemoveEndpoint(_ context.Context, o core.ObservedEndpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.eps, o.Key)
	return nil
}

// Observe implements core.Driver: what it was asked to have.
func (d *Driver) Observe(context.Context) (core.Actual, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return core.Actual{}, d.fail
	}
	a := core.Actual{Networks: make(map[string]core.ObservedNetwork, len(d.nets)), Endpoints: make(map[string]core.ObservedEndpoint, len(d.eps))}
	for k, v := range d.nets {
		a.Networks[k] = v
	}
	for k, v := range d.eps {
		a.Endpoints[k] = v
	}
	return a, nil
}

// SetRemotes implements core.Forwarder.
func (d *Driver) SetRemotes(_ context.Context, r map[string]core.NetRemotes) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.remotes = r
	c := make(map[string]int, len(r))
	for nk, nr := range r {
		c[nk] = len(nr.Endpoints)
	}
	d.calls = append(d.calls, c)
	return nil
}

// RemoteCalls returns, for every SetRemotes so far, how many remote
// endpoints it gave per network (a network it left out is absent).
func (d *Driver) RemoteCalls() []map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]map[string]int(nil), d.calls...)
}

// Remotes returns what the last SetRemotes gave for network nk.
func (d *Driver) Remotes(nk string) (core.NetRemotes, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.remotes[nk]
	return r, ok
}

// RemoteCount is how many remote endpoints the last SetRemotes gave in all.
func (d *Driver) RemoteCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, r := range d.remotes {
		n += len(r.Endpoints)
	}
	return n
}

// Endpoints is how many endpoints the driver holds.
func (d *Driver) Endpoints() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.eps)
}

// Fail makes Observe fail with err from now on (nil: work again).
func (d *Driver) Fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail = err
}

// ErrBroken is a failure for Fail.
var ErrBroken = errors.New("recording driver told to fail")
