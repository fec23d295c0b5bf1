package linuxbridge

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// VXLANPort is the UDP port of every host's VXLAN devices: 8472 (the Linux
// kernel's historical default, flannel's too), not IANA's 4789, because OVS's
// userspace datapath pops every VXLAN packet sent to 4789 at a VTEP address its
// tunnels use: on a host that runs both drivers over one --vtep-ip, the kernel
// device would never see its own packets.
const VXLANPort = 8472

// vxlanOverhead is what VXLAN over IPv4 adds to a frame: outer IPv4 (20), UDP
// (8), VXLAN (8) and the inner Ethernet header (14).
const vxlanOverhead = 50

// uplinkLink is one of our VXLAN devices or 802.1Q subinterfaces.
type uplinkLink struct {
	kind   string // d.kindVX or d.kindVLAN
	link   netlink.Link
	fields []string // the alias fields before the network key
}

// uplinksByNet groups our uplink links by network key.
func (d *Driver) uplinksByNet(links []netlink.Link) map[string][]uplinkLink {
	out := map[string][]uplinkLink{}
	for _, l := range links {
		if f, ok := nl.ParseAlias(l.Attrs().Alias, d.kindVX, 2); ok {
			out[f[1]] = append(out[f[1]], uplinkLink{kind: d.kindVX, link: l, fields: f[:1]})
		} else if f, ok := nl.ParseAlias(l.Attrs().Alias, d.kindVLAN, 3); ok {
			out[f[2]] = append(out[f[2]], uplinkLink{kind: d.kindVLAN, link: l, fields: f[:2]})
		}
	}
	return out
}

// wantUplink is the kind of uplink link a network of encap needs on this
// host: a VXLAN device with a VTEP, a subinterface with an uplink, else none.
func (d *Driver) wantUplink(encap string) string {
	switch {
	case encap == core.EncapVXLAN && d.vtep != nil:
		return d.kindVX
	case encap == core.EncapVLAN && d.cfg.Uplink != "":
		return d.kindVLAN
	}
	return ""
}

// uplinkHealthy reports whether a bridge's uplink links are what its network
// (of encap, as recorded in the bridge's alias; "" for a bridge marked before
// encaps were recorded) needs with this host's settings: exactly the wanted
// link, up, on the bridge, from the current VTEP or uplink.
func (d *Driver) uplinkHealthy(encap string, ups []uplinkLink, bridge int) bool {
	if encap == "" {
		for _, u := range ups {
			if u.link.Attrs().MasterIndex != bridge {
				return false
			}
		}
		return true
	}
	want := d.wantUplink(encap)
	if want == "" {
		return len(ups) == 0
	}
	if len(ups) != 1 || ups[0].kind != want {
		return false
	}
	u := ups[0]
	a := u.link.Attrs()
	if a.Flags&unix.IFF_UP == 0 || a.MasterIndex != bridge {
		return false
	}
	if vx, ok := u.link.(*netlink.Vxlan); want == d.kindVX && (!ok || !vx.SrcAddr.Equal(d.vtep)) {
		return false
	}
	return want != d.kindVLAN || u.fields[0] == d.cfg.Uplink
}

// ensureUplink gives the network's bridge the uplink link its encap needs on
// this host, removes any other of ours, and records the network's container
// MTU. It returns the encap to record in the bridge's alias.
func (d *Driver) ensureUplink(n core.NetworkSpec, br netlink.Link) (string, error) {
	want := d.wantUplink(n.Encap)
	if err := d.removeUplinks(n.Key(), want); err != nil {
		return "", err
	}
	var err error
	switch want {
	case d.kindVX:
		if err = d.ensureVXLAN(n, br); err == nil {
			// A device made now gets its entries at once, not at the
			// agent's next SetRemotes.
			d.mu.Lock()
			remotes := d.remotes
			d.mu.Unlock()
			err = d.syncForwarding(remotes, n.Key())
		}
	case d.kindVLAN:
		err = d.ensureVLAN(n, br)
	}
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	delete(d.mtus, n.Key()) // measured again: the underlay may have changed
	d.mu.Unlock()
	if _, err := d.mtu(n); err != nil {
		return "", err
	}
	return n.Encap, nil
}

// removeUplinks deletes our uplink links of network netKey other than those of
// kind keep ("": all).
func (d *Driver) removeUplinks(netKey, keep string) error {
	links, err := nl.LinkList(nil)
	if err != nil {
		return err
	}
	for _, u := range d.uplinksByNet(links)[netKey] {
		if u.kind == keep {
			continue
		}
		if err := netlink.LinkDel(u.link); err != nil && !nl.IsNotFound(err) {
			return fmt.Errorf("delete %s of network %s: %w", u.link.Attrs().Name, netKey, err)
		}
		d.log.WithFields(logrus.Fields{"net": netKey, "link": u.link.Attrs().Name}).Info("uplink link removed")
	}
	return nil
}

// ensureVXLAN makes the network's VXLAN device: VNI = tag, local = VTEP, the
// IANA port, learning off (entries come from etcd, see SetRemotes), proxy on
// (ARP for remote endpoints is answered from those entries, never flooded),
// enslaved to the bridge and up. A device built differently is rebuilt.
func (d *Driver) ensureVXLAN(n core.NetworkSpec, br netlink.Link) error {
	name := VXLANName(d.host, n.Key())
	alias := nl.Alias(d.kindVX, strconv.Itoa(n.Tag), n.Key())
	mtu, err := d.vxlanMTU()
	if err != nil {
		return fmt.Errorf("network %s: %w", n.Key(), err)
	}
	link, err := netlink.LinkByName(name)
	switch {
	case nl.IsNotFound(err):
		link = nil
	case err != nil:
		return fmt.Errorf("look up %s: %w", name, err)
	default:
		if _, ok := nl.ParseAlias(link.Attrs().Alias, d.kindVX, 2); !ok {
			return fmt.Errorf("%w: link %s exists but is not netplugin's; not touching it", core.ErrInUse, name)
		}
		vx, ok := link.(*netlink.Vxlan)
		if !ok || vx.VxlanId != n.Tag || !vx.SrcAddr.Equal(d.vtep) || vx.Port != VXLANPort || vx.Learning || !vx.Proxy {
			if err := netlink.LinkDel(link); err != nil && !nl.IsNotFound(err) {
				return fmt.Errorf("delete outdated %s: %w", name, err)
			}
			d.log.WithFields(logrus.Fields{"net": n.Key(), "link": name}).Info("VXLAN device built differently; rebuilding it")
			link = nil
		}
	}
	if link == nil {
		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, VxlanId: n.Tag, SrcAddr: d.vtep,
			Port: VXLANPort, Learning: false, Proxy: true}
		if link, err = nl.AddMarked(nil, vx, alias); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("%w: network %s: another VXLAN device on this host already has VNI %d (port %d)",
					core.ErrInUse, n.Key(), n.Tag, VXLANPort)
			}
			return fmt.Errorf("create VXLAN device %s for %s: %w", name, n.Key(), err)
		}
		d.log.WithFields(logrus.Fields{"net": n.Key(), "link": name, "vni": n.Tag, "local": d.vtep, "mtu": mtu}).Info("VXLAN device created")
	}
	return d.attach(link, br, mtu, alias)
}

// ensureVLAN makes the network's 802.1Q subinterface of the uplink, enslaved
// to the bridge and up. An interface of that name that is not ours (an
// operator's own subinterface) is refused: enslaving it would change it.
func (d *Driver) ensureVLAN(n core.NetworkSpec, br netlink.Link) error {
	parent, err := netlink.LinkByName(d.cfg.Uplink)
	if nl.IsNotFound(err) {
		return fmt.Errorf("%w: network %s: uplink %s (--uplink) does not exist on this host", core.ErrNotFound, n.Key(), d.cfg.Uplink)
	}
	if err != nil {
		return fmt.Errorf("look up uplink %s: %w", d.cfg.Uplink, err)
	}
	name := nl.VLANName(d.cfg.Uplink, n.Tag)
	alias := nl.Alias(d.kindVLAN, d.cfg.Uplink, strconv.Itoa(n.Tag), n.Key())
	link, err := netlink.LinkByName(name)
	switch {
	case nl.IsNotFound(err):
		link = nil
	case err != nil:
		return fmt.Errorf("look up %s: %w", name, err)
	default:
		f, ok := nl.ParseAlias(link.Attrs().Alias, d.kindVLAN, 3)
		if !ok || f[2] != n.Key() {
			return fmt.Errorf("%w: link %s exists but is not netplugin's subinterface for network %s; not touching it",
				core.ErrInUse, name, n.Key())
		}
		if v, ok := link.(*netlink.Vlan); !ok || v.VlanId != n.Tag || v.ParentIndex != parent.Attrs().Index {
			if err := netlink.LinkDel(link); err != nil && !nl.IsNotFound(err) {
				return fmt.Errorf("delete outdated %s: %w", name, err)
			}
			link = nil
		}
	}
	if link == nil {
		if link, err = nl.CreateVLAN(nil, parent, n.Tag, name, alias); err != nil {
			return fmt.Errorf("network %s: %w", n.Key(), err)
		}
		d.log.WithFields(logrus.Fields{"net": n.Key(), "link": name, "uplink": d.cfg.Uplink, "vlan": n.Tag}).Info("VLAN subinterface created")
	}
	return d.attach(link, br, 0, alias)
}

// attach puts an uplink link on its bridge with the given MTU (0: as it is),
// its alias current, up.
func (d *Driver) attach(link, br netlink.Link, mtu int, alias string) error {
	name := link.Attrs().Name
	if mtu > 0 && link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set MTU of %s to %d: %w", name, mtu, err)
		}
	}
	if link.Attrs().Alias != alias {
		if err := netlink.LinkSetAlias(link, alias); err != nil {
			return fmt.Errorf("mark %s: %w", name, err)
		}
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMasterByIndex(link, br.Attrs().Index); err != nil {
			return fmt.Errorf("attach %s to %s: %w", name, br.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// vxlanMTU is the MTU of VXLAN networks' containers and devices: --mtu, or
// the MTU of the interface holding the VTEP address less the encapsulation.
func (d *Driver) vxlanMTU() (int, error) {
	if d.cfg.MTU > 0 {
		return d.cfg.MTU, nil
	}
	l, err := nl.LinkOfAddr(nil, d.vtep)
	if err != nil {
		return 0, fmt.Errorf("%w: --vtep-ip %s: %v", core.ErrNotFound, d.vtep, err)
	}
	return l.Attrs().MTU - vxlanOverhead, nil
}

// mtu is the MTU of the network's container interfaces (0: the kernel's
// default), measured once per EnsureNetwork and cached.
func (d *Driver) mtu(n core.NetworkSpec) (int, error) {
	d.mu.Lock()
	v, ok := d.mtus[n.Key()]
	d.mu.Unlock()
	if ok {
		return v, nil
	}
	switch d.wantUplink(n.Encap) {
	case d.kindVX:
		m, err := d.vxlanMTU()
		if err != nil {
			return 0, err
		}
		v = m
	case d.kindVLAN:
		// The subinterface carries what its parent carries.
		l, err := netlink.LinkByName(d.cfg.Uplink)
		if err != nil {
			return 0, fmt.Errorf("%w: uplink %s: %v", core.ErrNotFound, d.cfg.Uplink, err)
		}
		v = l.Attrs().MTU
	}
	d.mu.Lock()
	d.mtus[n.Key()] = v
	d.mu.Unlock()
	return v, nil
}

// NetworkNote implements core.Noter: a network this host cannot join to the
// other hosts says so in its endpoints' status.
func (d *Driver) NetworkNote(n core.NetworkSpec) string {
	switch {
	case n.Encap == core.EncapVXLAN && d.vtep == nil:
		return "host-local: no --vtep-ip on host " + d.host
	case n.Encap == core.EncapVLAN && d.cfg.Uplink == "":
		return "host-local: no --uplink on host " + d.host
	}
	return ""
}
