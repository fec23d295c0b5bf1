package linuxbridge

// Bandwidth of network profiles, as the CNI bandwidth plugin does it (this
// kernel has no tc policing): into the endpoint, a tbf on the host end of its
// veth (the bridge sends through it towards the container); out of the
// endpoint, the veth's ingress redirected to an ifb device of ours with a tbf
// on it. Everything is replaced in place: the endpoint's link is never
// re-created, and a qdisc already as wanted is not touched (replacing a tbf
// refills its bucket). DSCP marks are set in the nftables bridge table.

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// IFBName is the ifb device carrying an endpoint's outbound traffic through
// its shaper, on the host of agent host ("npi" + 10 hex = 13 bytes).
func IFBName(host, epKey string) string { return core.LinkPrefix + "i" + core.Short(host+"|"+epKey) }

// applyQoS makes the shapers of every endpoint link of ours match p: those
// with a profile get theirs, all others none.
func (d *Driver) applyQoS(p core.HostPolicy) error {
	want := map[string]core.QoS{}
	for _, e := range p.Endpoints {
		if e.QoS != nil {
			want[e.Key] = *e.QoS
		}
	}
	links, err := nl.LinkList(nil)
	if err != nil {
		return err
	}
	var errs []error
	ifbs := map[string]netlink.Link{}
	for _, l := range links {
		if f, ok := nl.ParseAlias(l.Attrs().Alias, d.kindIFB, 1); ok {
			ifbs[f[0]] = l
		}
	}
	for _, l := range links {
		f, ok := nl.ParseAlias(l.Attrs().Alias, d.kindEP, 3)
		if !ok {
			continue
		}
		key := f[2]
		if err := d.shape(l, key, want[key]); err != nil {
			errs = append(errs, err)
		}
		delete(ifbs, key)
	}
	for key, l := range ifbs { // endpoints gone: their ifb goes too
		if err := netlink.LinkDel(l); err != nil && !nl.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete ifb %s of %s: %w", l.Attrs().Name, key, err))
		}
	}
	return errors.Join(errs...)
}

// qosFor applies the profile the policy in force gives the endpoint key to
// its just-made link.
func (d *Driver) qosFor(key string) error {
	d.pol.mu.Lock()
	var q core.QoS
	for _, e := range d.pol.last.Endpoints {
		if e.Key == key && e.QoS != nil {
			q = *e.QoS
		}
	}
	d.pol.mu.Unlock()
	if q.RateIn == 0 && q.RateOut == 0 {
		return nil
	}
	link, err := netlink.LinkByName(core.HostIfName(key))
	if err != nil {
		return fmt.Errorf("shape %s: %w", key, err)
	}
	return d.shape(link, key, q)
}

// shape programs one endpoint link's shapers.
func (d *Driver) shape(link netlink.Link, key string, q core.QoS) error {
	name := link.Attrs().Name
	qdiscs, err := netlink.QdiscList(link)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", name, err)
	}
	var ingress netlink.Qdisc
	for _, x := range qdiscs {
		if x.Attrs().Parent == netlink.HANDLE_INGRESS {
			ingress = x
		}
	}
	// Into the endpoint: the host end's own egress.
	if err := nl.SetTbf(nil, link, q.RateIn, q.BurstFor(q.RateIn)); err != nil {
		return fmt.Errorf("shape traffic into %s: %w", key, err)
	}
	// Out of the endpoint: the host end's ingress, through an ifb.
	ifbName := IFBName(d.host, key)
	if q.RateOut == 0 {
		if ingress != nil {
			if err := netlink.QdiscDel(ingress); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("remove ingress of %s: %w", name, err)
			}
		}
		return deleteOurs(ifbName, d.kindIFB, 1)
	}
	ifb, err := d.ensureIFB(ifbName, key)
	if err != nil {
		return err
	}
	if err := nl.SetTbf(nil, ifb, q.RateOut, q.BurstFor(q.RateOut)); err != nil {
		return fmt.Errorf("shape traffic out of %s: %w", key, err)
	}
	if ingress == nil {
		in := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index,
			Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
		if err := netlink.QdiscAdd(in); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add ingress qdisc to %s: %w", name, err)
		}
	}
	filters, err := netlink.FilterList(link, netlink.MakeHandle(0xffff, 0))
	if err != nil {
		return fmt.Errorf("list filters of %s: %w", name, err)
	}
	for _, f := range filters {
		if u, ok := f.(*netlink.U32); ok && len(u.Actions) == 1 {
			if m, ok := u.Actions[0].(*netlink.MirredAction); ok && m.Ifindex == ifb.Attrs().Index {
				return nil // already redirecting to our ifb
			}
		}
	}
	redirect := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0),
			Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
	if err := netlink.FilterReplace(redirect); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", name, ifbName, err)
	}
	return nil
}

// ensureIFB returns the endpoint's ifb device, made and marked if missing.
func (d *Driver) ensureIFB(name, key string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	switch {
	case nl.IsNotFound(err):
		l, err = nl.AddMarked(nil, &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: 1000}}, nl.Alias(d.kindIFB, key))
		if err != nil {
			return nil, fmt.Errorf("create ifb %s for %s (CONFIG_IFB): %w", name, key, err)
		}
	case err != nil:
		return nil, fmt.Errorf("look up %s: %w", name, err)
	default:
		if _, ok := nl.ParseAlias(l.Attrs().Alias, d.kindIFB, 1); !ok {
			return nil, fmt.Errorf("%w: link %s exists but is not netplugin's; not touching it", core.ErrInUse, name)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return l, nil
}
