package ovs

import (
	"context"
	"fmt"
	"net"
	"sort"

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
	}, true)
	if err != nil {
		return fmt.Errorf("ensure network %s: %w", n.Key(), err)
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
	}, false)
	if err != nil {
		return fmt.Errorf("remove network %s: %w", o.Key, err)
	}
	return nil
}

// SetPeers makes the tunnel ports match the live remote VTEPs and reprograms
// the tunnel flows, which also puts back flows removed behind our back (the
// agent calls this on every sync). Without a local VTEP it only remembers them.
func (d *Driver) SetPeers(ctx context.Context, peers []core.Peer) error {
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	d.infraMu.Lock()
	defer d.infraMu.Unlock()
	var bad []string
	var keep []core.Peer
	for _, p := range peers {
		switch ip := net.ParseIP(p.VTEP).To4(); {
		case p.VTEP == "":
			// A host without VTEP does VLAN only.
		case ip == nil:
			bad = append(bad, fmt.Sprintf("%s (%q)", p.Name, p.VTEP))
		case ip.String() != d.cfg.VTEP:
			keep = append(keep, core.Peer{Name: p.Name, VTEP: ip.String()})
		}
	}
	sort.Slice(keep, func(i, j int) bool { return keep[i].VTEP < keep[j].VTEP })
	d.peers, d.peersKnown = keep, true
	if !d.tunnels() {
		return nil
	}
	if err := d.ready(ctx); err != nil {
		return err
	}
	// With no network yet converge finds no bridge and does nothing; the first
	// EnsureNetwork then adds the tunnels for the peers remembered here.
	if err := d.converge(ctx, nil, true); err != nil {
		return fmt.Errorf("set peers: %w", err)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: peers with a VTEP that is not an IPv4 address: %v", core.ErrInvalid, bad)
	}
	return nil
}

// tunnelName is the tunnel port towards vtep: "npt" + 8 hex digits of the
// IPv4 address, readable in ovs-vsctl show and stable across restarts.
func tunnelName(vtep string) string {
	ip := net.ParseIP(vtep).To4()
	return fmt.Sprintf("npt%02x%02x%02x%02x", ip[0], ip[1], ip[2], ip[3])
}
