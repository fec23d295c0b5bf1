package hostnic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// RemoveEndpoint gives the endpoint's NIC back to the host as it was. It needs
// only the key: everything else is in the binding.
func (d *Driver) RemoveEndpoint(ctx context.Context, o core.ObservedEndpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.giveBackStrays()
	var b binding
	has, err := d.eps.Get(o.Key, &b)
	if err != nil || !has || !b.Detached.IsZero() {
		return err // no binding, or removed already and waiting for the NIC
	}
	return d.release(ctx, b)
}

// release moves the binding's NIC out of its namespace, restores it and drops
// the binding. A NIC that is nowhere: if its namespace is gone it may still be
// on its way back (the binding is kept, detached); otherwise it was deleted.
func (d *Driver) release(ctx context.Context, b binding) error {
	log := d.log.WithFields(logrus.Fields{"ep": b.Key, "nic": b.Orig.Name, "mac": b.MAC})
	h, ns, gone, err := openNS(b.NetNSPath, b.NetNSID)
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", b.Key, err)
	}
	if !gone {
		err := d.moveOut(h, b)
		ns.Close()
		h.Close()
		if err != nil {
			return fmt.Errorf("endpoint %s: %w", b.Key, err)
		}
	}
	link, marked, err := d.findOnHost(b)
	if err == nil && link == nil && gone {
		link, marked, err = d.waitOnHost(ctx, b)
	}
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", b.Key, err)
	}
	switch {
	case link != nil && marked:
		if err := d.restore(link, b); err != nil {
			return fmt.Errorf("endpoint %s: %w", b.Key, err)
		}
		log.Info("NIC given back to the host")
	case link != nil:
		log.Debug("NIC was already given back")
	case gone:
		b.Detached = time.Now()
		log.Warn("NIC has not come back from the destroyed namespace yet; it is given back when it shows up")
		return d.eps.Put(b.Key, b)
	default:
		log.Warn("NIC is gone (a virtual NIC deleted, or unplugged); forgetting it")
	}
	return d.eps.Del(b.Key)
}

// moveOut sends the binding's NIC from the namespace of h back to the host.
func (d *Driver) moveOut(h *netlink.Handle, b binding) error {
	nics, err := d.nicsOf(h, b.Key)
	if err != nil {
		return fmt.Errorf("netns %s: %w", b.NetNSPath, err)
	}
	for _, n := range nics {
		if err := h.LinkSetDown(n.Link); err != nil {
			return fmt.Errorf("set %s down in %s: %w", n.Link.Attrs().Name, b.NetNSPath, err)
		}
		if err := h.LinkSetName(n.Link, tempName(b.Key)); err != nil {
			return fmt.Errorf("rename %s in %s: %w", n.Link.Attrs().Name, b.NetNSPath, err)
		}
		if err := h.LinkSetNsFd(n.Link, int(d.hostNS)); err != nil {
			return fmt.Errorf("move %s out of %s: %w", n.Link.Attrs().Name, b.NetNSPath, err)
		}
	}
	return nil
}

// findOnHost finds the binding's NIC on the host: marked with its key (on its
// way back), or unmarked with its MAC (given back already).
func (d *Driver) findOnHost(b binding) (link netlink.Link, marked bool, err error) {
	links, err := nl.LinkList(d.host)
	if err != nil {
		return nil, false, err
	}
	for _, l := range links {
		if f, ok := nl.ParseAlias(l.Attrs().Alias, d.kind, 3); ok && f[2] == b.Key {
			return l, true, nil
		}
	}
	for _, l := range links {
		if b.MAC != "" && l.Attrs().HardwareAddr.String() == b.MAC && !strings.HasPrefix(l.Attrs().Alias, nl.Mark) {
			return l, false, nil
		}
	}
	return nil, false, nil
}

// waitOnHost polls for a NIC the kernel is still moving back from a destroyed
// namespace (namespace clean-up runs asynchronously).
func (d *Driver) waitOnHost(ctx context.Context, b binding) (netlink.Link, bool, error) {
	deadline := time.NewTimer(d.returnWait)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-deadline.C:
			return nil, false, nil
		case <-tick.C:
		}
		if link, marked, err := d.findOnHost(b); err != nil || link != nil {
			return link, marked, err
		}
	}
}

// restore gives a NIC on the host its original configuration back.
func (d *Driver) restore(link netlink.Link, b binding) error {
	h, name := d.host, link.Attrs().Name
	if err := h.LinkSetDown(link); err != nil {
		return fmt.Errorf("set %s down: %w", name, err)
	}
	if name != b.Orig.Name {
		if err := h.LinkSetName(link, b.Orig.Name); errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%w: cannot give %s back as %s: another link has that name now", core.ErrInUse, name, b.Orig.Name)
		} else if err != nil {
			return fmt.Errorf("rename %s to %s: %w", name, b.Orig.Name, err)
		}
	}
	if mac, err := net.ParseMAC(b.MAC); err == nil && link.Attrs().HardwareAddr.String() != b.MAC {
		if err := h.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("restore MAC of %s: %w", b.Orig.Name, err)
		}
	}
	if b.Orig.MTU > 0 && link.Attrs().MTU != b.Orig.MTU {
		if err := h.LinkSetMTU(link, b.Orig.MTU); err != nil {
			return fmt.Errorf("restore MTU of %s: %w", b.Orig.Name, err)
		}
	}
	if err := d.restoreAddrs(link, b); err != nil {
		return err
	}
	if b.Orig.Up {
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", b.Orig.Name, err)
		}
	}
	// The mark goes last: until here a crash leaves a NIC the next pass restores.
	if err := h.LinkSetAlias(link, b.Orig.Alias); err != nil {
		return fmt.Errorf("restore alias of %s: %w", b.Orig.Name, err)
	}
	return nil
}

// restoreAddrs puts exactly the original addresses back (IPv6 link-local ones
// come and go with the link and are left alone).
func (d *Driver) restoreAddrs(link netlink.Link, b binding) error {
	want := map[string]bool{}
	for _, a := range b.Orig.Addrs {
		want[a] = true
	}
	cur, err := nl.AddrList(d.host, link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", b.Orig.Name, err)
	}
	for _, a := range cur {
		if want[a.IPNet.String()] {
			delete(want, a.IPNet.String())
			continue
		}
		if a.IP.To4() == nil && a.IP.IsLinkLocalUnicast() {
			continue
		}
		if err := d.host.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove %s from %s: %w", a.IPNet, b.Orig.Name, err)
		}
	}
	for s := range want {
		a, err := netlink.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("recorded address %q of %s: %w", s, b.Orig.Name, err)
		}
		if err := d.host.AddrReplace(link, a); err != nil {
			return fmt.Errorf("restore %s on %s: %w", s, b.Orig.Name, err)
		}
	}
	return nil
}

// giveBackStrays restores every NIC of ours found on the host: one the kernel
// moved back from a destroyed namespace, one moved out by hand, or one a crash
// left half-way. Its binding stays (the endpoint is then observed unhealthy and
// bound again or removed) unless it was already detached.
func (d *Driver) giveBackStrays() {
	owned, err := nl.LinksOfKind(d.host, d.kind, 3)
	if err != nil {
		d.log.WithError(err).Warn("list host links; will retry")
		return
	}
	for _, o := range owned {
		key := o.Fields[2]
		log := d.log.WithFields(logrus.Fields{"ep": key, "link": o.Link.Attrs().Name, "nic": o.Fields[1]})
		var b binding
		has, err := d.eps.Get(key, &b)
		if err != nil {
			log.WithError(err).Warn("read binding; will retry")
			continue
		}
		if o.Link.Attrs().Name == core.HandOffIfName(key) && (!has || (b.Detached.IsZero() && core.IsSandboxNetNSID(b.NetNSID))) {
			// Handed off to Docker: waiting to be moved into the sandbox, or
			// given back by Docker's Leave. Without a binding here it is most
			// likely another agent's on this kernel (the mark names no host),
			// whose Docker is about to move it: taking it would break that
			// container's start.
			continue
		}
		if !has {
			// State dir lost: the alias still says what the NIC was called.
			b = binding{Key: key, Orig: original{Name: o.Fields[1]}}
			log.Warn("NIC of ours without a binding: giving its name back, its addresses are unknown")
		}
		if err := d.restore(o.Link, b); err != nil {
			log.WithError(err).Warn("give NIC back; will retry")
			continue
		}
		log.Info("NIC that came back to the host restored")
		if has && !b.Detached.IsZero() {
			if err := d.eps.Del(key); err != nil {
				log.WithError(err).Warn("drop binding; will retry")
			}
		}
	}
}
