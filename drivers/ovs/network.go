package ovs

import (
	"context"
	"fmt"
	"net"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
)

// EnsureNetwork records the network on the integration bridge (creating the
// bridges on first use), picks its local VLAN, and updates the uplink trunk,
// the patch trunk and the tunnel flows. A bridge of our name that is not ours
// makes it fail with core.ErrInUse before anything is changed.
func (d *Driver) EnsureNetwork(ctx context.Context, n core.NetworkSpec) error {
	if err := validateTag(n); err != nil {
		return err
	}
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	if err := d.ready(ctx); err != nil {
		return err
	}
	d.infraMu.Lock()
	defer d.infraMu.Unlock()
	d.underlayMTU.Store(0) // measured again: the underlay may have changed
	var vlan int
	err := d.converge(ctx, func(recs map[string]netRecord) error {
		rec := netRecord{FP: n.Fingerprint(), Encap: n.Encap, Tag: n.Tag, VLAN: n.Tag}
		if n.Encap == core.EncapVXLAN {
			if old, ok := recs[n.Key()]; ok && old.Encap == n.Encap && old.Tag == n.Tag {
				rec.VLAN = old.VLAN // keep what running endpoints are tagged with
			} else {
				v, err := allocLocalVLAN(recs, n.Key())
				if err != nil {
					return err
				}
				rec.VLAN = v
			}
		}
		// Two networks on one local VLAN would be one L2 segment.
		for k, o := range recs {
			if k == n.Key() {
				continue
			}
			if o.VLAN == rec.VLAN {
				return fmt.Errorf("%w: network %s needs local VLAN %d, which network %s (%s %d) uses",
					core.ErrInUse, n.Key(), rec.VLAN, k, o.Encap, o.Tag)
			}
			if o.Encap == n.Encap && o.Tag == n.Tag {
				return fmt.Errorf("%w: network %s has %s %d like network %s", core.ErrInUse, n.Key(), n.Encap, n.Tag, k)
			}
		}
		recs[n.Key()], vlan = rec, rec.VLAN
		return nil
	})
	if err != nil {
		return fmt.Errorf("ensure network %s: %w", n.Key(), err)
	}
	if err := d.reapplyPolicy(ctx); err != nil {
		return fmt.Errorf("ensure network %s: policy: %w", n.Key(), err)
	}
	if n.Encap == core.EncapVXLAN && !d.tunnels() {
		d.log.WithField("net", n.Key()).Warn("VXLAN network on a host without VTEP: it stays local to this host")
	}
	d.log.WithFields(logrus.Fields{"net": n.Key(), "encap": n.Encap, "tag": n.Tag, "vlan": vlan}).Debug("network ensured")
	return nil
}

// RemoveNetwork drops the network's record, trunk VLAN and flows; the last
// network takes the bridges with it (unless endpoints or foreign ports remain).
func (d *Driver) RemoveNetwork(ctx context.Context, o core.ObservedNetwork) error {
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	d.infraMu.Lock()
	defer d.infraMu.Unlock()
	err := d.converge(ctx, func(recs map[string]netRecord) error {
		delete(recs, o.Key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove network %s: %w", o.Key, err)
	}
	return nil
}

// SetRemotes implements core.Forwarder: tunnel ports to exactly the hosts that
// share a VXLAN network with this host, and tunnel flows that send a frame for
// a remote MAC to the one VTEP holding it and broadcast, multicast and unknown
// unicast only to the network's hosts. The flows are rewritten (one ovs-ofctl
// bundle) only when they change, or every Config.FlowRefresh to put back what
// was deleted behind our back. Without a local VTEP it only remembers them.
func (d *Driver) SetRemotes(ctx context.Context, remotes map[string]core.NetRemotes) error {
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	d.infraMu.Lock()
	defer d.infraMu.Unlock()
	clean, bad := d.cleanRemotes(remotes)
	d.remotes, d.remotesKnown = clean, true
	if !d.tunnels() {
		return nil
	}
	if err := d.ready(ctx); err != nil {
		return err
	}
	// With no network yet converge finds no bridge and does nothing; the first
	// EnsureNetwork then adds the tunnels for the hosts remembered here.
	if err := d.converge(ctx, nil); err != nil {
		return fmt.Errorf("set remotes: %w", err)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: remote hosts or endpoints with a bad VTEP or MAC skipped: %v", core.ErrInvalid, bad)
	}
	return nil
}

// cleanRemotes keeps the hosts and endpoints with a usable VTEP other than our
// own (a VTEP in canonical form, so that it names the same tunnel port) and,
// for endpoints, a MAC; it lists the rest.
func (d *Driver) cleanRemotes(remotes map[string]core.NetRemotes) (map[string]core.NetRemotes, []string) {
	out := make(map[string]core.NetRemotes, len(remotes))
	var bad []string
	vtep := func(s string) (string, bool) {
		ip := net.ParseIP(s).To4()
		return ip.String(), ip != nil && ip.String() != d.cfg.VTEP
	}
	for key, r := range remotes {
		var c core.NetRemotes
		for _, h := range r.Hosts {
			if v, ok := vtep(h.VTEP); ok {
				c.Hosts = append(c.Hosts, core.Peer{Name: h.Name, VTEP: v})
			} else if h.VTEP != d.cfg.VTEP {
				bad = append(bad, fmt.Sprintf("host %s (%q)", h.Name, h.VTEP))
			}
		}
		for _, e := range r.Endpoints {
			mac, err := net.ParseMAC(e.MAC)
			v, ok := vtep(e.VTEP)
			if err != nil || !ok {
				if e.VTEP != d.cfg.VTEP {
					bad = append(bad, fmt.Sprintf("endpoint %s on %s (%q)", e.MAC, e.Host, e.VTEP))
				}
				continue
			}
			e.MAC, e.VTEP = mac.String(), v
			c.Endpoints = append(c.Endpoints, e)
		}
		out[key] = c
	}
	return out, bad
}

// NetworkNote implements core.Noter: a network this host cannot join to the
// other hosts says so in its endpoints' status.
func (d *Driver) NetworkNote(n core.NetworkSpec) string {
	switch {
	case n.Encap == core.EncapVXLAN && !d.tunnels():
		return "host-local: no --vtep-ip on host " + d.cfg.Host
	case n.Encap == core.EncapVLAN && d.cfg.Uplink == "":
		return "host-local: no --ovs-uplink on host " + d.cfg.Host
	}
	return ""
}

// tunnelName is the tunnel port towards vtep: "npt" + 8 hex digits of the
// IPv4 address, readable in ovs-vsctl show and stable across restarts.
func tunnelName(vtep string) string {
	ip := net.ParseIP(vtep).To4()
	return fmt.Sprintf("npt%02x%02x%02x%02x", ip[0], ip[1], ip[2], ip[3])
}
