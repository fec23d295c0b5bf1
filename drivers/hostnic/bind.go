package hostnic

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// original is a NIC's host-side configuration, restored when it is given back.
type original struct {
	Name  string   `json:"name"`
	Addrs []string `json:"addrs,omitempty"` // CIDRs
	Up    bool     `json:"up"`
	MTU   int      `json:"mtu,omitempty"`
	Alias string   `json:"alias,omitempty"`
}

// binding records which NIC an endpoint holds, written before the NIC is touched.
type binding struct {
	Key         string   `json:"key"`
	Fingerprint string   `json:"fingerprint"`
	Network     string   `json:"network"`
	NetNSPath   string   `json:"netnsPath"`
	NetNSID     string   `json:"netnsId"`
	MAC         string   `json:"mac"`  // the NIC's MAC: how it is recognised
	Addr        string   `json:"addr"` // IP/prefix in the container
	Orig        original `json:"original"`
	// Detached is when RemoveEndpoint gave up waiting for the NIC to come back
	// from a destroyed namespace; zero while the endpoint is bound.
	Detached time.Time `json:"detached,omitzero"`
}

func (b binding) alias(kind string) string { return nl.Alias(kind, b.Fingerprint, b.Orig.Name, b.Key) }

// tempName is the NIC's name while it crosses namespaces ("nph" + 10 hex): its
// host name may exist in the container (eth0 on both sides) and its container
// name on the host, this one in neither.
func tempName(key string) string { return core.LinkPrefix + "h" + core.Short(key) }

// EnsureEndpoint binds the selected NIC into the endpoint's namespace. A NIC
// already bound there with the same fingerprint is repaired in place (address,
// up, gateway), never moved, so the container keeps its traffic. For a Docker
// sandbox a NIC waiting on the host for Docker to move it is left alone, and
// one is handed off again while the sandbox is not bound (see handoff.go).
func (d *Driver) EnsureEndpoint(ctx context.Context, ep core.EndpointSpec) (core.ObservedEndpoint, error) {
	fp := ep.Fingerprint()
	obs := core.ObservedEndpoint{Key: ep.Key(), Fingerprint: fp}
	sel, cif, err := endpointTarget(ep)
	if err != nil {
		return obs, err
	}
	log := d.log.WithFields(logrus.Fields{"ep": ep.Key(), "netns": ep.NetNSPath})

	d.mu.Lock()
	defer d.mu.Unlock()
	d.giveBackStrays()
	var old binding
	had, err := d.eps.Get(ep.Key(), &old)
	if err != nil {
		return obs, err
	}
	if had && old.Detached.IsZero() {
		if old.Fingerprint == fp {
			var name string
			var index int
			var found bool
			if core.IsSandboxNetNSID(old.NetNSID) {
				name, index, found, err = d.findHandedOff(ctx, old)
			} else {
				name, index, found, err = d.repair(old, cif)
			}
			if err != nil || found {
				obs.IfName, obs.IfIndex, obs.Healthy = name, index, err == nil
				return obs, err
			}
			// Not in the namespace (given back above, or gone): bind again.
		} else if err := d.release(ctx, old); err != nil {
			return obs, fmt.Errorf("endpoint %s: give back the NIC of its previous binding: %w", ep.Key(), err)
		}
	}
	link, b, err := d.claim(ep, sel, cif, old, had)
	if err != nil {
		return obs, err
	}
	var name string
	var index int
	if core.IsSandboxNetNSID(b.NetNSID) && !sandboxBound(b.NetNSPath) {
		name, index, err = d.handOff(link, b)
	} else {
		name, index, err = d.take(link, b, cif)
	}
	if err != nil {
		if rerr := d.release(ctx, b); rerr != nil {
			log.WithError(rerr).Error("could not undo a failed bind; the next pass retries")
		}
		return obs, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	obs.IfName, obs.IfIndex, obs.Healthy = name, index, true
	log.WithFields(logrus.Fields{"nic": b.Orig.Name, "mac": b.MAC, "ifname": name, "ip": ep.IP}).Info("NIC bound")
	return obs, nil
}

// endpointTarget validates ep: the NIC it selects and its configuration
// inside the container.
func endpointTarget(ep core.EndpointSpec) (selector, nl.ContainerIf, error) {
	sel, err := endpointSelector(ep)
	if err != nil {
		return sel, nl.ContainerIf{}, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	_, sn, err := net.ParseCIDR(ep.Net.Subnet)
	if err != nil {
		return sel, nl.ContainerIf{}, fmt.Errorf("endpoint %s: %w: subnet %q", ep.Key(), core.ErrInvalid, ep.Net.Subnet)
	}
	prefix, _ := sn.Mask.Size()
	return sel, nl.ContainerIf{IP: ep.IP, Prefix: prefix, Gateway: ep.Net.Gateway}, nil
}

// claim finds the NIC sel names for ep, checks that it may be taken and
// records the binding before anything touches the NIC. old is the endpoint's
// previous binding, if had.
func (d *Driver) claim(ep core.EndpointSpec, sel selector, cif nl.ContainerIf, old binding, had bool) (netlink.Link, binding, error) {
	if other, err := d.boundTo(sel, ep.Key()); err != nil || other != "" {
		if err == nil {
			err = fmt.Errorf("%w: %s is bound to endpoint %s", core.ErrInUse, sel, other)
		}
		return nil, binding{}, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	link, err := d.find(sel)
	if err != nil {
		return nil, binding{}, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	if err := d.mayTake(link, sel); err != nil {
		return nil, binding{}, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	b := binding{Key: ep.Key(), Fingerprint: ep.Fingerprint(), Network: ep.Net.Key(), NetNSPath: ep.NetNSPath, NetNSID: ep.NetNSID,
		MAC: link.Attrs().HardwareAddr.String(), Addr: fmt.Sprintf("%s/%d", cif.IP, cif.Prefix)}
	if had && old.MAC == b.MAC {
		b.Orig = old.Orig // the NIC came back mid-binding: the first snapshot is the truth
	} else if b.Orig, err = d.snapshot(link); err != nil {
		return nil, binding{}, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	if err := d.eps.Put(b.Key, b); err != nil {
		return nil, binding{}, err
	}
	return link, b, nil
}

// repair finds the binding's NIC in its namespace and configures it again.
func (d *Driver) repair(b binding, cif nl.ContainerIf) (name string, index int, found bool, err error) {
	h, ns, gone, err := openNS(b.NetNSPath, b.NetNSID)
	if gone || err != nil {
		return "", 0, false, err
	}
	defer ns.Close()
	defer h.Close()
	nics, err := d.nicsOf(h, b.Key)
	if err != nil || len(nics) == 0 {
		return "", 0, false, err
	}
	nic := nics[0].Link
	if err := nl.ConfigureIf(h, nic, cif); err != nil {
		return "", 0, true, fmt.Errorf("repair %s in %s: %w", nic.Attrs().Name, b.NetNSPath, err)
	}
	return nic.Attrs().Name, nic.Attrs().Index, true, nil
}

// take moves the NIC into the binding's namespace and configures it there.
func (d *Driver) take(link netlink.Link, b binding, cif nl.ContainerIf) (string, int, error) {
	h := d.host
	// Mark first: from here on a crash leaves a NIC that says whose it is.
	if err := h.LinkSetAlias(link, b.alias(d.kind)); err != nil {
		return "", 0, fmt.Errorf("mark %s: %w", b.Orig.Name, err)
	}
	if err := h.LinkSetDown(link); err != nil {
		return "", 0, fmt.Errorf("set %s down: %w", b.Orig.Name, err)
	}
	tmp := tempName(b.Key)
	if err := h.LinkSetName(link, tmp); err != nil {
		return "", 0, fmt.Errorf("rename %s to %s: %w", b.Orig.Name, tmp, err)
	}
	ch, cns, err := nl.InNS(b.NetNSPath)
	if err != nil {
		return "", 0, err
	}
	defer cns.Close()
	defer ch.Close()
	if err := h.LinkSetNsFd(link, int(cns)); err != nil {
		return "", 0, fmt.Errorf("move %s into %s: %w", b.Orig.Name, b.NetNSPath, err)
	}
	nic, err := ch.LinkByName(tmp)
	if err != nil {
		return "", 0, fmt.Errorf("find %s in %s: %w", tmp, b.NetNSPath, err)
	}
	name, err := d.names.AddNamed(b.NetNSPath, ch, "eth", func(name string) error { return ch.LinkSetName(nic, name) })
	if err != nil {
		return "", 0, fmt.Errorf("rename %s to ethN in %s: %w", tmp, b.NetNSPath, err)
	}
	if err := nl.ConfigureIf(ch, nic, cif); err != nil {
		return "", 0, fmt.Errorf("configure %s in %s: %w", name, b.NetNSPath, err)
	}
	// The kernel keeps the ifindex across the move unless the container already
	// uses it; read it where the NIC is now.
	if nic, err = ch.LinkByName(name); err != nil {
		return "", 0, fmt.Errorf("find %s in %s: %w", name, b.NetNSPath, err)
	}
	return name, nic.Attrs().Index, nil
}

// inspect reports the binding's NIC as found in its namespace, or, for a
// Docker sandbox, waiting on the host for Docker to move it (healthy: Docker
// brings it up and gives it its address).
func (d *Driver) inspect(b binding) core.ObservedEndpoint {
	obs := core.ObservedEndpoint{Key: b.Key, Fingerprint: b.Fingerprint}
	if nic, err := d.waitingOnHost(b); err != nil || nic != nil {
		if err != nil {
			d.log.WithError(err).WithField("ep", b.Key).Warn("cannot look for the handed-off NIC on the host")
			return obs
		}
		f, _ := nl.ParseAlias(nic.Attrs().Alias, d.kind, 3)
		obs.Fingerprint, obs.IfName, obs.IfIndex, obs.Healthy = f[0], nic.Attrs().Name, nic.Attrs().Index, true
		return obs
	}
	h, ns, gone, err := openNS(b.NetNSPath, b.NetNSID)
	if gone || err != nil {
		if err != nil {
			d.log.WithError(err).WithField("ep", b.Key).Warn("cannot look into the endpoint's namespace")
		}
		return obs
	}
	defer ns.Close()
	defer h.Close()
	nics, err := d.nicsOf(h, b.Key)
	if err != nil || len(nics) == 0 {
		return obs
	}
	a := nics[0].Link.Attrs()
	obs.Fingerprint, obs.IfName, obs.IfIndex = nics[0].Fields[0], a.Name, a.Index
	if core.IsSandboxNetNSID(b.NetNSID) {
		// Docker renames, addresses and brings up a handed-off NIC after
		// moving it in: judging (and so repairing) that would race Docker.
		obs.Healthy = true
		return obs
	}
	if a.Flags&net.FlagUp == 0 {
		return obs
	}
	addrs, err := nl.AddrList(h, nics[0].Link, netlink.FAMILY_V4)
	for _, ad := range addrs {
		if err == nil && ad.IPNet.String() == b.Addr {
			obs.Healthy = true
		}
	}
	return obs
}

// nicsOf lists the links in the namespace of h marked as the endpoint's.
func (d *Driver) nicsOf(h *netlink.Handle, key string) ([]nl.OwnedLink, error) {
	owned, err := nl.LinksOfKind(h, d.kind, 3)
	if err != nil {
		return nil, err
	}
	out := owned[:0]
	for _, o := range owned {
		if o.Fields[2] == key {
			out = append(out, o)
		}
	}
	return out, nil
}

// openNS opens a recorded namespace. gone reports that it no longer exists or
// that its path now holds another namespace (a restarted container). A Docker
// sandbox is identified by its path alone (core.SandboxNetNSID), so nothing is
// compared; gone then also means "not bound yet".
func openNS(path, id string) (h *netlink.Handle, ns netns.NsHandle, gone bool, err error) {
	if !core.IsSandboxNetNSID(id) {
		cur, err := nl.NetNSID(path)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && id != "" && cur != id) {
			return nil, 0, true, nil
		}
		if err != nil {
			return nil, 0, false, err
		}
	}
	h, ns, err = nl.InNS(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.EINVAL) {
		// Gone meanwhile, or a file that is no namespace (any more, or yet).
		return nil, 0, true, nil
	}
	return h, ns, false, err
}
