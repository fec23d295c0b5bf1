package hostnic

// Docker networks. Docker's Join comes before the sandbox's namespace exists,
// and Docker moves the link it is given into the sandbox itself. So
// PrepareHandOff records the binding as for any endpoint (before the NIC is
// touched), marks the NIC and renames it on the host to core.HandOffIfName;
// Docker moves it in, renames it ethN and configures it (and sets the MAC it
// knows for the endpoint: restore puts the NIC's own back). On Leave Docker
// moves it back to the host under the hand-off name, and RemoveEndpoint gives
// it back as after any binding: original name, MAC, MTU, addresses, alias.
//
// Such a binding has the sandbox path as NetNSPath and core.SandboxNetNSID(path)
// as NetNSID. That ID is never compared with an inode: the path names the
// sandbox, and the namespace behind it may not be bound yet. A marked NIC under
// the hand-off name on the host is therefore not a stray to give back but the
// endpoint's, waiting for Docker (or returned by its Leave), and healthy; so is
// the NIC inside the sandbox, up or not, addressed or not: Docker, not the
// agent, configures it, and configuring it behind Docker's back would make
// Docker's own address add fail the container's start.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// PrepareHandOff binds the selected NIC to the endpoint and leaves it on the
// host, down and renamed to core.HandOffIfName, for Docker to move into the
// sandbox. A repeated call finds the NIC still waiting there.
func (d *Driver) PrepareHandOff(ctx context.Context, ep core.EndpointSpec) (string, error) {
	if !core.IsSandboxNetNSID(ep.NetNSID) {
		return "", fmt.Errorf("%w: endpoint %s: hand-off needs a sandbox ID (core.SandboxNetNSID), got %q", core.ErrInvalid, ep.Key(), ep.NetNSID)
	}
	sel, cif, err := endpointTarget(ep)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.giveBackStrays()
	var old binding
	had, err := d.eps.Get(ep.Key(), &old)
	if err != nil {
		return "", err
	}
	if had && old.Detached.IsZero() {
		if old.Fingerprint == ep.Fingerprint() {
			if nic, err := d.waitingOnHost(old); err != nil || nic != nil {
				if err != nil {
					return "", fmt.Errorf("endpoint %s: %w", ep.Key(), err)
				}
				return nic.Attrs().Name, nil
			}
		}
		// Bound for another spec, or moved into the sandbox by an earlier
		// attempt: give it back first, then hand it off afresh.
		if err := d.release(ctx, old); err != nil {
			return "", fmt.Errorf("endpoint %s: give back the NIC of its previous binding: %w", ep.Key(), err)
		}
	}
	link, b, err := d.claim(ep, sel, cif, old, had)
	if err != nil {
		return "", err
	}
	name, _, err := d.handOff(link, b)
	if err != nil {
		if rerr := d.release(ctx, b); rerr != nil {
			d.log.WithError(rerr).WithField("ep", ep.Key()).Error("could not undo a failed hand-off; the next pass retries")
		}
		return "", fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	d.log.WithFields(logrus.Fields{"ep": ep.Key(), "nic": b.Orig.Name, "mac": b.MAC, "link": name, "sandbox": ep.NetNSPath}).Info("NIC handed off")
	return name, nil
}

// handOff marks the NIC, sets it down and renames it to its hand-off name on
// the host: the name Docker moves it by, and gives it back under on Leave.
func (d *Driver) handOff(link netlink.Link, b binding) (string, int, error) {
	h := d.host
	// Mark first: from here on a crash leaves a NIC that says whose it is.
	if err := h.LinkSetAlias(link, b.alias(d.kind)); err != nil {
		return "", 0, fmt.Errorf("mark %s: %w", b.Orig.Name, err)
	}
	if err := h.LinkSetDown(link); err != nil {
		return "", 0, fmt.Errorf("set %s down: %w", b.Orig.Name, err)
	}
	name := core.HandOffIfName(b.Key)
	if err := h.LinkSetName(link, name); errors.Is(err, unix.EEXIST) {
		return "", 0, fmt.Errorf("%w: rename %s to %s: another link has that name", core.ErrInUse, b.Orig.Name, name)
	} else if err != nil {
		return "", 0, fmt.Errorf("rename %s to %s: %w", b.Orig.Name, name, err)
	}
	nic, err := h.LinkByName(name)
	if err != nil {
		return "", 0, fmt.Errorf("find %s: %w", name, err)
	}
	return name, nic.Attrs().Index, nil
}

// waitingOnHost returns the NIC of a Docker sandbox's binding if it is on the
// host under its hand-off name, marked as the endpoint's; nil otherwise.
func (d *Driver) waitingOnHost(b binding) (netlink.Link, error) {
	if !core.IsSandboxNetNSID(b.NetNSID) {
		return nil, nil
	}
	l, err := d.host.LinkByName(core.HandOffIfName(b.Key))
	if nl.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", core.HandOffIfName(b.Key), err)
	}
	if f, ok := nl.ParseAlias(l.Attrs().Alias, d.kind, 3); ok && f[2] == b.Key {
		return l, nil
	}
	return nil, nil
}

// Moving a link to another namespace hides it from both for an RCU grace
// period, so a NIC Docker is moving may be found nowhere for a moment:
// findHandedOff looks again transitTries times, transitPause apart, before
// reporting it missing.
const (
	transitTries = 5
	transitPause = 40 * time.Millisecond
)

// findHandedOff finds the NIC of a Docker sandbox's binding: waiting on the
// host, or inside the sandbox. Inside, it is left as it is: Docker
// configures it.
func (d *Driver) findHandedOff(ctx context.Context, b binding) (name string, index int, found bool, err error) {
	for try := 1; ; try++ {
		nic, err := d.waitingOnHost(b)
		if err != nil || nic != nil {
			if nic != nil {
				name, index = nic.Attrs().Name, nic.Attrs().Index
			}
			return name, index, nic != nil, err
		}
		h, ns, gone, err := openNS(b.NetNSPath, b.NetNSID)
		if err != nil {
			return "", 0, false, err
		}
		if !gone {
			nics, err := d.nicsOf(h, b.Key)
			ns.Close()
			h.Close()
			if err != nil {
				return "", 0, false, fmt.Errorf("netns %s: %w", b.NetNSPath, err)
			}
			if len(nics) > 0 {
				a := nics[0].Link.Attrs()
				return a.Name, a.Index, true, nil
			}
		}
		if try == transitTries {
			return "", 0, false, nil
		}
		select {
		case <-ctx.Done():
			return "", 0, false, ctx.Err()
		case <-time.After(transitPause):
		}
	}
}

// sandboxBound reports whether the sandbox at path has its namespace yet.
func sandboxBound(path string) bool {
	h, ns, gone, err := openNS(path, core.SandboxNetNSID(path))
	if gone || err != nil {
		return false
	}
	ns.Close()
	h.Close()
	return true
}
