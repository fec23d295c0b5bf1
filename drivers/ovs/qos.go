package ovs

// Bandwidth of network profiles. The userspace datapath reads a port's
// packets with a packet socket, which sees them before any ingress qdisc of
// the host end, so traffic out of an endpoint cannot be shaped on the host
// side; and this kernel has no tc policing (OVS's ingress_policing_rate
// silently does nothing). So:
//
//   - into the endpoint: our tbf on the host end of its veth, through which
//     vswitchd sends (what OVS's own linux-htb QoS would put there);
//   - out of the endpoint: our tbf on the container end, inside the
//     endpoint's namespace. A container with CAP_NET_ADMIN could remove it
//     (Docker gives none by default); an OpenFlow meter could not be
//     removed, but as a policer it holds TCP at a tenth of the rate.
//
// Both are changed in place, and only a root qdisc with our handle is ever
// replaced or removed. vswitchd resets the qdiscs of every port it manages
// unless the port's QoS is "linux-noop": every endpoint port of ours has
// that QoS (one row of ours, made with the first port, deleted with the
// bridges), so the qdiscs of our ports are ours to manage.

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
	"github.com/netplugin/netplugin/internal/nl"
)

// roleQoS marks our linux-noop QoS row.
const roleQoS = "qos-noop"

// noopQoS caches the UUID of our linux-noop QoS row.
type noopQoS struct {
	mu   sync.Mutex
	uuid ovsdb.UUID
}

// noopQoS returns our linux-noop QoS row, made if missing.
func (d *Driver) noopQoS(ctx context.Context) (ovsdb.UUID, error) {
	c := &d.qos
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.uuid != "" {
		return c.uuid, nil
	}
	mark := ovsdb.Map{extOwner: ownerValue, extRole: roleQoS}
	res, err := d.tx(ctx, true, ovsdb.Select("QoS", []ovsdb.Condition{ovsdb.Includes("external_ids", mark)}, "_uuid", "external_ids"))
	if err != nil {
		return "", fmt.Errorf("read QoS rows: %w", err)
	}
	for _, r := range res[0].Rows {
		if ext, _ := r.GetStringMap("external_ids"); d.ours(ext) {
			if c.uuid, err = r.UUID(); err == nil {
				return c.uuid, nil
			}
		}
	}
	res, err = d.tx(ctx, false, ovsdb.Insert("QoS", "noop", ovsdb.Row{"type": "linux-noop", "external_ids": ovsdb.StringMap(d.marks(roleQoS))}),
		ovsdb.Comment("netplugin: our ports' qdiscs are ours"))
	if err != nil {
		return "", fmt.Errorf("make QoS row: %w", err)
	}
	c.uuid = res[0].UUID
	return c.uuid, nil
}

// forgetQoS drops the cached row (it was deleted, or a port referring to
// it was refused).
func (d *Driver) forgetQoS() {
	d.qos.mu.Lock()
	d.qos.uuid = ""
	d.qos.mu.Unlock()
}

// applyQoS makes the shapers of every endpoint port of ours match p. Callers
// hold pol.mu.
func (d *Driver) applyQoS(p core.HostPolicy) error {
	want := map[string]core.PolicyEndpoint{}
	for _, e := range p.Endpoints {
		if e.QoS != nil {
			want[e.Key] = e
		}
	}
	links, err := nl.LinkList(d.host)
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		f, ok := nl.ParseAlias(l.Attrs().Alias, kindEP, 2)
		if !ok {
			continue
		}
		key := f[1]
		e, shaped := want[key]
		if !shaped && !d.pol.shapedIn[key] && d.pol.shapedOut[key] == "" && d.pol.swept {
			continue // never shaped: nothing to look at
		}
		var q core.QoS
		if shaped {
			q = *e.QoS
		}
		if err := nl.SetTbf(d.host, l, q.RateIn, q.BurstFor(q.RateIn)); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", key, err))
		} else if q.RateIn > 0 {
			d.pol.shapedIn[key] = true
		} else {
			delete(d.pol.shapedIn, key)
		}
		path := e.NetNSPath
		if path == "" {
			path = d.pol.shapedOut[key]
		}
		if q.RateOut == 0 && d.pol.shapedOut[key] == "" {
			continue
		}
		if path == "" {
			errs = append(errs, fmt.Errorf("%w: endpoint %s: shaping its outbound traffic needs its namespace", core.ErrInvalid, key))
			continue
		}
		if err := d.shapeContainerEnd(path, l, q); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", key, err))
			continue
		}
		if q.RateOut > 0 {
			d.pol.shapedOut[key] = path
		} else {
			delete(d.pol.shapedOut, key)
		}
	}
	d.pol.swept = len(errs) == 0
	return errors.Join(errs...)
}

// shapeContainerEnd sets (or clears) our tbf on the container end of host
// link hostEnd, found in the namespace at path by its index.
func (d *Driver) shapeContainerEnd(path string, hostEnd netlink.Link, q core.QoS) error {
	h, ns, err := nl.InNS(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	defer h.Close()
	peer, err := h.LinkByIndex(hostEnd.Attrs().ParentIndex)
	if err != nil {
		return fmt.Errorf("container end of %s in %s: %w", hostEnd.Attrs().Name, path, err)
	}
	return nl.SetTbf(h, peer, q.RateOut, q.BurstFor(q.RateOut))
}

// qosFor shapes a just-made endpoint link as the policy in force says.
func (d *Driver) qosFor(ep core.EndpointSpec, link netlink.Link) error {
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	for _, e := range d.pol.last.Endpoints {
		if e.Key != ep.Key() || e.QoS == nil {
			continue
		}
		q := *e.QoS
		if err := nl.SetTbf(d.host, link, q.RateIn, q.BurstFor(q.RateIn)); err != nil {
			return err
		}
		if q.RateIn > 0 {
			d.pol.shapedIn[e.Key] = true
		}
		if q.RateOut > 0 {
			if err := d.shapeContainerEnd(ep.NetNSPath, link, q); err != nil {
				return err
			}
			d.pol.shapedOut[e.Key] = ep.NetNSPath
		}
	}
	return nil
}
