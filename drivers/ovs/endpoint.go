package ovs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
	"github.com/netplugin/netplugin/internal/nl"
)

// epRows is the OVSDB state of one endpoint's port, if any.
type epRows struct {
	port   *portRow
	tag    int64 // -1 if none
	ofport int64 // 0 while vswitchd has not attached it, -1 if it failed
}

func (d *Driver) readEndpoint(ctx context.Context, name string) (epRows, error) {
	res, err := d.tx(ctx, true,
		ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Eq("name", name)}, "_uuid", "name", "external_ids", "tag"),
		ovsdb.Select("Interface", []ovsdb.Condition{ovsdb.Eq("name", name)}, "ofport", "external_ids"))
	if err != nil {
		return epRows{}, fmt.Errorf("read port %s: %w", name, err)
	}
	st := epRows{tag: -1}
	if len(res[0].Rows) > 0 {
		st.port = toPort(res[0].Rows[0])
		if t, err := res[0].Rows[0].GetInt("tag"); err == nil {
			st.tag = t
		}
	}
	if len(res[1].Rows) > 0 {
		st.ofport, _ = res[1].Rows[0].GetInt("ofport")
		if ext, _ := res[1].Rows[0].GetStringMap("external_ids"); st.port == nil && !d.ours(ext) {
			// An interface of our name inside someone else's port.
			st.port = &portRow{name: name, ext: ext}
		}
	}
	return st, nil
}

// EnsureEndpoint plugs the endpoint in. What is already right is repaired in
// place, never recreated: a port with the right fingerprint keeps its row and
// so its ofport, and a veth with the right fingerprint keeps its ifindex, so
// containers keep their traffic across agent restarts. The port insert joins
// those of concurrent calls in one OVSDB transaction (see batcher).
func (d *Driver) EnsureEndpoint(ctx context.Context, ep core.EndpointSpec) (core.ObservedEndpoint, error) {
	key, name, fp := ep.Key(), core.HostIfName(ep.Key()), ep.Fingerprint()
	obs := core.ObservedEndpoint{Key: key, Fingerprint: fp, IfName: name}
	if err := validateTag(ep.Net); err != nil {
		return obs, err
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return obs, fmt.Errorf("%w: MAC of %s: %v", core.ErrInvalid, key, err)
	}
	_, sn, err := net.ParseCIDR(ep.Net.Subnet)
	if err != nil {
		return obs, fmt.Errorf("%w: subnet of %s: %v", core.ErrInvalid, ep.Net.Key(), err)
	}
	prefix, _ := sn.Mask.Size()
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	if err := d.ready(ctx); err != nil {
		return obs, err
	}
	vlan, err := d.localVLAN(ctx, ep.Net)
	if err != nil {
		return obs, err
	}
	defer d.lockKey(key)()
	cur, err := d.readEndpoint(ctx, name)
	if err != nil {
		return obs, err
	}
	if cur.port != nil && !d.ours(cur.port.ext) {
		return obs, d.notOurs("OVS port "+name, cur.port.ext)
	}
	link, err := d.host.LinkByName(name)
	switch {
	case nl.IsNotFound(err):
		link = nil
	case err != nil:
		return obs, fmt.Errorf("look up %s: %w", name, err)
	default:
		if _, ok := nl.ParseAlias(link.Attrs().Alias, kindEP, 2); !ok {
			return obs, fmt.Errorf("%w: link %s exists but is not netplugin's; not touching it", core.ErrInUse, name)
		}
	}
	ext := d.marks(roleEndpoint, extEndpoint, key, extFP, fp, extNet, ep.Net.Key())

	if link != nil {
		f, _ := nl.ParseAlias(link.Attrs().Alias, kindEP, 2)
		if f[0] == fp {
			return d.repair(ctx, obs, link, cur, vlan, ext)
		}
		// Built from another spec (new namespace, address...): rebuild.
		if err := d.host.LinkDel(link); err != nil && !nl.IsNotFound(err) {
			return obs, fmt.Errorf("remove outdated %s: %w", name, err)
		}
	}
	// A new port of a group passes nothing until its policy is in.
	ofport, err := d.holdUntilPolicy(ctx, ep)
	if err != nil {
		return obs, err
	}
	qos, err := d.noopQoS(ctx)
	if err != nil {
		return obs, err
	}
	link, err = d.createVeth(ep, name, mac, prefix)
	if err != nil {
		return obs, err
	}
	req := &portReq{name: name, insert: true, tag: vlan, ext: ext, ofport: ofport, qos: qos}
	if cur.port != nil {
		req.drop = cur.port.uuid // stale row of the old link: replace it
	}
	if err := d.batch.do(ctx, req); err != nil {
		// Leave nothing half-made behind; the next Ensure starts afresh
		// (and looks for the QoS row again, in case it is what went).
		_ = d.host.LinkDel(link)
		d.forgetQoS()
		return obs, fmt.Errorf("add port %s for %s: %w", name, key, err)
	}
	if err := d.qosFor(ep, link); err != nil {
		return obs, fmt.Errorf("shape %s: %w", key, err)
	}
	obs.IfIndex = link.Attrs().Index
	// Committed and up; vswitchd attaches it asynchronously, and Observe
	// reports the endpoint unhealthy until it has an ofport.
	obs.Healthy = true
	d.log.WithFields(logrus.Fields{"ep": key, "port": name, "vlan": vlan, "ip": ep.IP}).Debug("endpoint plugged")
	return obs, nil
}

// repair fixes an endpoint whose veth matches the spec: port put back if it
// was deleted or broken, tag corrected, link up. A healthy port row is never
// replaced, so it keeps its ofport.
func (d *Driver) repair(ctx context.Context, obs core.ObservedEndpoint, link netlink.Link, cur epRows,
	vlan int, ext map[string]string) (core.ObservedEndpoint, error) {
	name := obs.IfName
	if err := d.host.LinkSetUp(link); err != nil {
		return obs, fmt.Errorf("set %s up: %w", name, err)
	}
	obs.IfIndex = link.Attrs().Index
	switch {
	case cur.port == nil || cur.ofport < 0 || cur.port.ext[extFP] != obs.Fingerprint:
		qos, err := d.noopQoS(ctx)
		if err != nil {
			return obs, err
		}
		req := &portReq{name: name, insert: true, tag: vlan, ext: ext, ofport: d.policyPort(obs.Key), qos: qos}
		if cur.port != nil {
			req.drop = cur.port.uuid
		}
		if err := d.batch.do(ctx, req); err != nil {
			return obs, fmt.Errorf("put back port %s: %w", name, err)
		}
		d.log.WithFields(logrus.Fields{"ep": obs.Key, "port": name}).Info("port put back on the bridge")
	default:
		onBridge, err := d.onBridge(ctx, cur.port.uuid)
		if err != nil {
			return obs, err
		}
		var ops []ovsdb.Operation
		if !onBridge {
			ops = append(ops, ovsdb.Mutate("Bridge", nil, ovsdb.Mut("ports", "delete", ovsdb.Set{cur.port.uuid})),
				ovsdb.Mutate("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Bridge)},
					ovsdb.Mut("ports", "insert", ovsdb.Set{cur.port.uuid})))
		}
		if cur.tag != int64(vlan) {
			ops = append(ops, ovsdb.Update("Port", []ovsdb.Condition{ovsdb.Eq("_uuid", cur.port.uuid)}, ovsdb.Row{"tag": vlan}))
		}
		if len(ops) > 0 {
			if _, err := d.tx(ctx, false, append(ops, ovsdb.Comment("netplugin: repair "+name))...); err != nil {
				return obs, fmt.Errorf("repair port %s: %w", name, err)
			}
			d.log.WithFields(logrus.Fields{"ep": obs.Key, "port": name, "vlan": vlan}).Info("port repaired in place")
		}
	}
	obs.Healthy = true
	return obs, nil
}

func (d *Driver) onBridge(ctx context.Context, port ovsdb.UUID) (bool, error) {
	res, err := d.tx(ctx, true, ovsdb.Select("Bridge", []ovsdb.Condition{
		ovsdb.Eq("name", d.cfg.Bridge), ovsdb.Includes("ports", ovsdb.Set{port})}, "_uuid"))
	if err != nil {
		return false, fmt.Errorf("read bridge %s: %w", d.cfg.Bridge, err)
	}
	return len(res[0].Rows) == 1, nil
}

// createVeth makes the veth with its container end created directly inside
// the endpoint's namespace (no move: that waits for an RCU grace period) as
// the lowest free ethN, and configures it there.
func (d *Driver) createVeth(ep core.EndpointSpec, name string, mac net.HardwareAddr, prefix int) (netlink.Link, error) {
	h, ns, err := nl.InNS(ep.NetNSPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer h.Close()
	alias := nl.Alias(kindEP, ep.Fingerprint(), ep.Key())
	peerName, err := d.addVeth(h, ns, ep, name, alias, mac)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = d.host.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}})
		}
	}()
	link, err := d.host.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	if link.Attrs().Alias == "" { // older kernels ignore IFLA_IFALIAS on create
		if err := d.host.LinkSetAlias(link, alias); err != nil {
			return nil, fmt.Errorf("mark %s: %w", name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := d.host.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set %s up: %w", name, err)
		}
	}
	if d.cfg.DatapathType == "netdev" {
		// vswitchd reloads its routes on every link event of the host, and a
		// tunnel packet translated while a port's revalidation runs in that
		// window is handed to the kernel, not decapsulated (lost): see the
		// README's OVS notes. So the host end has no IPv6 link-local address
		// (each is a route to reload and a tunnel address to listen on), and
		// is promiscuous already when vswitchd opens it, which it makes so:
		// then the kernel says nothing.
		if err := d.host.LinkSetIP6AddrGenMode(link, in6AddrGenModeNone); err != nil {
			return nil, fmt.Errorf("no IPv6 address on %s: %w", name, err)
		}
		if link.Attrs().Promisc == 0 {
			if err := d.host.SetPromiscOn(link); err != nil {
				return nil, fmt.Errorf("set %s promiscuous: %w", name, err)
			}
		}
	}
	peer, err := h.LinkByName(peerName)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", peerName, ep.NetNSPath, err)
	}
	if d.cfg.DatapathType == "netdev" {
		// The userspace datapath forwards (and its conntrack checks) the
		// packets as the container sent them: their checksums must be done.
		if err := nl.SetTxChecksum(ns, peerName, false); err != nil {
			return nil, fmt.Errorf("container end %s of %s: %w", peerName, ep.Key(), err)
		}
	}
	if err := nl.ConfigureIf(h, peer, nl.ContainerIf{IP: ep.IP, Prefix: prefix, Gateway: ep.Net.Gateway}); err != nil {
		return nil, fmt.Errorf("configure %s in %s: %w", peerName, ep.NetNSPath, err)
	}
	ok = true
	return link, nil
}

// in6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE of linux/if_link.h.
const in6AddrGenModeNone = 1

// addVeth creates the pair, its peer named the lowest free ethN of the
// container's namespace (nl.Locks.AddNamed: two endpoints of one container
// never race for the same name).
func (d *Driver) addVeth(h *netlink.Handle, ns netns.NsHandle, ep core.EndpointSpec, name, alias string, mac net.HardwareAddr) (string, error) {
	mtu, err := d.containerMTU(ep.Net)
	if err != nil {
		return "", err
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: name, Flags: net.FlagUp, Alias: alias, MTU: mtu},
		PeerNamespace:    netlink.NsFd(int(ns)),
		PeerHardwareAddr: mac,
	}
	peerName, err := d.nsLocks.AddNamed(ep.NetNSPath, h, "eth", func(peer string) error {
		veth.PeerName = peer
		err := d.host.LinkAdd(veth)
		if errors.Is(err, unix.EEXIST) {
			if _, herr := d.host.LinkByName(name); herr == nil {
				err = fmt.Errorf("host end exists: %v", err) // not the ethN: no other name helps
			}
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("create veth %s/%s for %s: %w", name, veth.PeerName, ep.Key(), err)
	}
	return peerName, nil
}

// RemoveEndpoint deletes the host end of the veth (the kernel removes the
// container end with it), then the port. Either one not being ours is an error
// and neither is touched.
func (d *Driver) RemoveEndpoint(ctx context.Context, o core.ObservedEndpoint) error {
	name := core.HostIfName(o.Key)
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	defer d.lockKey(o.Key)()
	cur, err := d.readEndpoint(ctx, name)
	if err != nil {
		return fmt.Errorf("remove endpoint %s: %w", o.Key, err)
	}
	if cur.port != nil && !d.ours(cur.port.ext) {
		return d.notOurs("OVS port "+name, cur.port.ext)
	}
	link, err := d.host.LinkByName(name)
	switch {
	case nl.IsNotFound(err):
		link = nil
	case err != nil:
		return fmt.Errorf("look up %s: %w", name, err)
	default:
		if _, ok := nl.ParseAlias(link.Attrs().Alias, kindEP, 2); !ok {
			return fmt.Errorf("%w: link %s is not netplugin's; not touching it", core.ErrInUse, name)
		}
	}
	// The link goes first. Its deletion makes vswitchd reload its routes; a
	// port removal makes it revalidate every datapath flow. Together, a
	// tunnel packet translated while the routes reload is handed to the
	// kernel instead of decapsulated (lost), so the two must not coincide:
	// the route reload follows the link event at once, while the port's
	// removal comes with our transaction after it (see EnsureEndpoint).
	if link != nil {
		if err := d.host.LinkDel(link); err != nil && !nl.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	if cur.port != nil {
		if err := d.batch.do(ctx, &portReq{name: name, drop: cur.port.uuid}); err != nil {
			return fmt.Errorf("remove port %s: %w", name, err)
		}
	}
	return nil
}

// commitPorts is the batcher's commit: all requests in one transaction. If the
// server refuses it, each request is retried alone, so that one bad request
// (say, a foreign port created meanwhile under our name) fails only itself.
func (d *Driver) commitPorts(ctx context.Context, reqs []*portReq) {
	err := d.transactPorts(ctx, reqs)
	var te *ovsdb.TxnError
	if err != nil && len(reqs) > 1 && errors.As(err, &te) {
		for _, r := range reqs {
			r.err = d.transactPorts(ctx, []*portReq{r})
		}
		return
	}
	for _, r := range reqs {
		r.err = err
	}
}

func (d *Driver) transactPorts(ctx context.Context, reqs []*portReq) error {
	var t txn
	var drop ovsdb.Set
	var add []ovsdb.NamedUUID
	if slices.ContainsFunc(reqs, func(r *portReq) bool { return r.insert }) {
		// Abort the whole transaction (changing nothing) if the bridge is
		// gone, rather than inserting rows that would be garbage at once.
		t.add(ovsdb.Wait("Bridge", 0, []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Bridge)}, []string{"name"}, "==",
			ovsdb.Row{"name": d.cfg.Bridge}))
	}
	for _, r := range reqs {
		if r.drop != "" {
			drop = append(drop, r.drop)
		}
		if r.insert {
			var iface ovsdb.Row
			if r.ofport > 0 {
				iface = ovsdb.Row{"ofport_request": r.ofport}
			}
			row := ovsdb.Row{"tag": r.tag}
			if r.qos != "" {
				row["qos"] = r.qos
			}
			add = append(add, t.port(r.name, r.ext, row, iface))
		}
	}
	if len(drop) > 0 {
		// Every bridge, not just ours: a port moved elsewhere still goes.
		t.add(ovsdb.Mutate("Bridge", nil, ovsdb.Mut("ports", "delete", drop)))
	}
	attach := -1
	if len(add) > 0 {
		attach = len(t.ops)
		t.add(ovsdb.Mutate("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Bridge)},
			ovsdb.Mut("ports", "insert", ovsdb.SetOf(add))))
	}
	t.add(ovsdb.Comment(fmt.Sprintf("netplugin: %d endpoint port change(s)", len(reqs))))
	res, err := d.tx(ctx, false, t.ops...)
	var te *ovsdb.TxnError
	if errors.As(err, &te) && te.Op == "wait" {
		return fmt.Errorf("%w: bridge %s: ensure a network first", core.ErrNotFound, d.cfg.Bridge)
	}
	if err != nil {
		return err
	}
	if attach >= 0 && res[attach].Count != 1 {
		// Unreferenced, the new rows were garbage-collected: nothing changed.
		return fmt.Errorf("%w: bridge %s", core.ErrNotFound, d.cfg.Bridge)
	}
	return nil
}

// containerMTU is the MTU of the network's container interfaces: for a VXLAN
// network on a host with a VTEP, Config.MTU or the underlay's less the VXLAN
// encapsulation; else 0, the kernel's default. The underlay's is measured once
// and again after every EnsureNetwork.
func (d *Driver) containerMTU(n core.NetworkSpec) (int, error) {
	if n.Encap != core.EncapVXLAN || !d.tunnels() {
		return 0, nil
	}
	if d.cfg.MTU > 0 {
		return d.cfg.MTU, nil
	}
	if v := d.underlayMTU.Load(); v > 0 {
		return int(v), nil
	}
	l, err := nl.LinkOfAddr(d.host, net.ParseIP(d.cfg.VTEP))
	if err != nil {
		return 0, fmt.Errorf("%w: --vtep-ip %s: %v", core.ErrNotFound, d.cfg.VTEP, err)
	}
	v := l.Attrs().MTU - vxlanOverhead
	d.underlayMTU.Store(int64(v))
	return v, nil
}

// vxlanOverhead is what VXLAN over IPv4 adds to a frame: outer IPv4 (20), UDP
// (8), VXLAN (8) and the inner Ethernet header (14).
const vxlanOverhead = 50
