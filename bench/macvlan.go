package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/state"
)

// macvlan runs attach_macvlan_floor and attach_macvlan: n macvlan children of one
// parent (a veth end standing in for the uplink), one per namespace.
func (b *bench) macvlan(ctx context.Context) ([]Result, error) {
	parent, peer := b.prefix+"mp", b.prefix+"mq"
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: parent, Flags: net.FlagUp}, PeerName: peer}); err != nil {
		return nil, fmt.Errorf("parent: %w", err)
	}
	defer netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: parent}})
	floorNS, err := makeNamespaces(b.prefix+"mf", b.n)
	defer deleteNamespaces(floorNS)
	if err != nil {
		return nil, err
	}
	agentNS, err := makeNamespaces(b.prefix+"ma", b.n)
	defer deleteNamespaces(agentNS)
	if err != nil {
		return nil, err
	}
	p, err := netlink.LinkByName(parent)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	for i, name := range floorNS {
		h, ns, err := nl.InNS("/var/run/netns/" + name)
		if err != nil {
			return nil, err
		}
		mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "eth0", ParentIndex: p.Attrs().Index, Namespace: netlink.NsFd(int(ns)),
			HardwareAddr: net.HardwareAddr{0x02, 0x4e, 0x50, 0, byte(i >> 8), byte(i)}}, Mode: netlink.MACVLAN_MODE_BRIDGE}
		err = netlink.LinkAdd(mv)
		if err == nil {
			var l netlink.Link
			if l, err = h.LinkByName("eth0"); err == nil {
				err = nl.ConfigureIf(h, l, nl.ContainerIf{IP: core.IPFromUint(core.IPToUint(net.ParseIP("10.93.0.0")) + uint32(i) + 1).String(), Prefix: 22})
			}
		}
		ns.Close()
		h.Close()
		if err != nil {
			return nil, fmt.Errorf("floor child %d: %w", i, err)
		}
	}
	floor := time.Since(start)
	floorRate := float64(b.n) / floor.Seconds()
	res := []Result{{Name: "attach_macvlan_floor", Value: floorRate, Unit: "endpoints/s",
		Note: fmt.Sprintf("%d macvlan children made in their netns by a plain netlink loop, %.1f ms each", b.n, floor.Seconds()*1000/float64(b.n))}}

	env, err := b.startEtcd(ctx)
	if err != nil {
		return res, err
	}
	defer env.close()
	host, tenant := b.prefix+"-mhost", b.prefix+"m"
	defer cleanStateDirs(host)
	a, err := b.startAgent(env.url, env.listen, host, "--drivers", "macvlan")
	if err != nil {
		return res, err
	}
	defer a.stop()
	doc := endpointsDoc(tenant, "macvlan", "10.94.0.0/22", host, agentNS, map[string]string{"parent": parent})
	start = time.Now()
	if _, err := env.store.Apply(ctx, doc, host); err != nil {
		return res, err
	}
	if _, err := waitUp(ctx, env.store.Client(), host, tenant, b.n, 5*time.Minute); err != nil {
		return res, fmt.Errorf("attach: %w: %s", err, trimLog(a.log.String()))
	}
	took := time.Since(start)
	rate := float64(b.n) / took.Seconds()
	ratio := rate / floorRate
	res = append(res, Result{Name: "attach_macvlan", Value: rate, Unit: "endpoints/s", Target: ">= 0.5 x attach_macvlan_floor",
		Pass: boolp(ratio >= 0.5), Note: fmt.Sprintf("ratio %.2f; %d endpoints from -cfg apply to all up in %.2fs", ratio, b.n, took.Seconds())})
	if os.Getenv("NETPLUGIN_BENCH_LOG") != "" {
		fmt.Fprintln(os.Stderr, a.log.String())
	}
	_, _ = env.store.Apply(ctx, state.Document{}, host)
	return res, nil
}
