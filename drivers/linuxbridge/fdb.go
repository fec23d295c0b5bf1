package linuxbridge

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// zeroMAC is the forwarding entry a VXLAN device floods broadcast, multicast
// and unknown unicast with: one per remote VTEP (head-end replication).
var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// fdbKey identifies one forwarding entry of a VXLAN device: MAC and VTEP.
type fdbKey struct{ mac, vtep string }

// SetRemotes implements core.Forwarder: it makes the forwarding and neighbour
// entries of every VXLAN device of ours equal to what remotes says for its
// network (a network missing from remotes has none). Every entry on our
// devices is ours (they learn nothing and the kernel adds none to them);
// entries on any other device are never looked at. Two dumps per call, and
// netlink calls only for what differs, so an unchanged cluster costs no change.
func (d *Driver) SetRemotes(ctx context.Context, remotes map[string]core.NetRemotes) error {
	d.mu.Lock()
	d.remotes = maps.Clone(remotes)
	d.mu.Unlock()
	if d.vtep == nil {
		return nil // no VXLAN device on this host
	}
	return d.syncForwarding(remotes, "")
}

// syncForwarding programs the VXLAN devices of every network, or of network
// only when not "".
func (d *Driver) syncForwarding(remotes map[string]core.NetRemotes, only string) error {
	links, err := nl.LinkList(nil)
	if err != nil {
		return err
	}
	devs := map[int]string{} // ifindex -> network key
	names := map[int]string{}
	for _, l := range links {
		if f, ok := nl.ParseAlias(l.Attrs().Alias, d.kindVX, 2); ok && (only == "" || f[1] == only) {
			devs[l.Attrs().Index], names[l.Attrs().Index] = f[1], l.Attrs().Name
		}
	}
	if len(devs) == 0 {
		return nil
	}
	fdb, err := nl.NeighList(nil, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("list forwarding entries: %w", err)
	}
	arp, err := nl.NeighList(nil, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	fdbOf, arpOf := map[int][]netlink.Neigh{}, map[int][]netlink.Neigh{}
	for _, n := range fdb {
		// Self entries are the device's own table; master entries are the
		// bridge's (learned local MACs and the like), not ours to manage.
		if _, ok := devs[n.LinkIndex]; ok && n.Flags&netlink.NTF_SELF != 0 {
			fdbOf[n.LinkIndex] = append(fdbOf[n.LinkIndex], n)
		}
	}
	for _, n := range arp {
		if _, ok := devs[n.LinkIndex]; ok {
			arpOf[n.LinkIndex] = append(arpOf[n.LinkIndex], n)
		}
	}
	var errs []error
	for idx, key := range devs {
		if err := d.syncDevice(idx, names[idx], key, remotes[key], fdbOf[idx], arpOf[idx]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// syncDevice makes one device's entries equal to r.
func (d *Driver) syncDevice(idx int, name, netKey string, r core.NetRemotes, haveFDB, haveARP []netlink.Neigh) error {
	wantFDB := map[fdbKey]bool{}
	wantARP := map[string]net.HardwareAddr{}
	var bad []string
	for _, e := range r.Endpoints {
		mac, err := net.ParseMAC(e.MAC)
		vtep := net.ParseIP(e.VTEP).To4()
		if err != nil || vtep == nil {
			bad = append(bad, fmt.Sprintf("%s/%s@%s", e.MAC, e.IP, e.VTEP))
			continue
		}
		wantFDB[fdbKey{mac.String(), vtep.String()}] = true
		if ip := net.ParseIP(e.IP).To4(); ip != nil {
			wantARP[ip.String()] = mac
		}
	}
	for _, h := range r.Hosts {
		if vtep := net.ParseIP(h.VTEP).To4(); vtep != nil && !vtep.Equal(d.vtep) {
			wantFDB[fdbKey{zeroMAC.String(), vtep.String()}] = true
		}
	}
	var errs []error
	added, removed := 0, 0
	have := map[fdbKey]bool{}
	for _, n := range haveFDB {
		k := fdbKey{n.HardwareAddr.String(), n.IP.String()}
		have[k] = true
		if wantFDB[k] {
			continue
		}
		// Stale entries go first: a MAC that moved to another VTEP is then
		// re-added below rather than left with two destinations.
		if err := netlink.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			HardwareAddr: n.HardwareAddr, IP: n.IP}); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete forwarding entry %s -> %s on %s: %w", k.mac, k.vtep, name, err))
			continue
		}
		removed++
	}
	for k := range wantFDB {
		if have[k] {
			continue
		}
		mac, _ := net.ParseMAC(k.mac)
		e := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT,
			HardwareAddr: mac, IP: net.ParseIP(k.vtep).To4()}
		var err error
		if k.mac == zeroMAC.String() {
			// Several all-zero entries, one per VTEP: appended, not replaced.
			err = netlink.NeighAppend(e)
		} else {
			err = netlink.NeighSet(e)
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("add forwarding entry %s -> %s on %s: %w", k.mac, k.vtep, name, err))
			continue
		}
		added++
	}
	for _, n := range haveARP {
		ip := n.IP.String()
		if mac, ok := wantARP[ip]; ok && n.HardwareAddr.String() == mac.String() && n.State&netlink.NUD_PERMANENT != 0 {
			delete(wantARP, ip) // already right
			continue
		}
		if _, ok := wantARP[ip]; ok {
			continue // replaced below
		}
		if err := netlink.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, IP: n.IP}); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbour %s on %s: %w", ip, name, err))
			continue
		}
		removed++
	}
	for ip, mac := range wantARP {
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP(ip).To4(), HardwareAddr: mac}); err != nil {
			errs = append(errs, fmt.Errorf("add neighbour %s -> %s on %s: %w", ip, mac, name, err))
			continue
		}
		added++
	}
	if added+removed > 0 {
		d.log.WithFields(logrus.Fields{"net": netKey, "link": name, "added": added, "removed": removed,
			"endpoints": len(r.Endpoints), "hosts": len(r.Hosts)}).Info("VXLAN forwarding entries updated")
	}
	if len(bad) > 0 {
		errs = append(errs, fmt.Errorf("%w: network %s: remote endpoints with a bad MAC or VTEP skipped: %v", core.ErrInvalid, netKey, bad))
	}
	return errors.Join(errs...)
}
