package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/state"
)

// linuxbridge runs attach_floor, attach_linuxbridge, resync_500 and the agent's peak RSS.
func (b *bench) linuxbridge(ctx context.Context) ([]Result, error) {
	var res []Result
	floorNS, err := makeNamespaces(b.prefix+"f", b.n)
	defer deleteNamespaces(floorNS)
	if err != nil {
		return nil, err
	}
	agentNS, err := makeNamespaces(b.prefix+"a", b.n)
	defer deleteNamespaces(agentNS)
	if err != nil {
		return nil, err
	}

	floor, err := b.floorLinuxbridge(floorNS)
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	floorRate := float64(b.n) / floor.Seconds()
	res = append(res, Result{Name: "attach_floor", Value: floorRate, Unit: "endpoints/s",
		Note: fmt.Sprintf("%d veths into %d netns by a plain netlink loop, %.1f ms each", b.n, b.n, floor.Seconds()*1000/float64(b.n))})

	env, err := b.startEtcd(ctx)
	if err != nil {
		return res, err
	}
	defer env.close()
	host := b.prefix + "-host"
	defer cleanStateDirs(host)
	tenant := b.prefix + "t"
	a, err := b.startAgent(env.url, env.listen, host)
	if err != nil {
		return res, err
	}
	defer func() { a.stop() }()
	doc := endpointsDoc(tenant, "linuxbridge", "10.90.0.0/22", host, agentNS, nil)
	start := time.Now()
	if _, err := env.store.Apply(ctx, doc, host); err != nil {
		return res, fmt.Errorf("apply: %w", err)
	}
	applied := time.Since(start)
	idx1, err := waitUp(ctx, env.store.Client(), host, tenant, b.n, 5*time.Minute)
	if err != nil {
		return res, fmt.Errorf("attach: %w: %s", err, trimLog(a.log.String()))
	}
	took := time.Since(start)
	rate := float64(b.n) / took.Seconds()
	ratio := rate / floorRate
	res = append(res, Result{Name: "attach_linuxbridge", Value: rate, Unit: "endpoints/s", Target: ">= 0.5 x attach_floor",
		Pass: boolp(ratio >= 0.5), Note: fmt.Sprintf("ratio %.2f; %d endpoints from -cfg apply to all up in %.2fs (the apply itself %.2fs)", ratio, b.n, took.Seconds(), applied.Seconds())})
	rss1 := peakRSS(a.cmd.Process.Pid)

	// Restart: a clean stop revokes the lease, so every status must be written
	// again; no link may change.
	a.stop()
	start = time.Now()
	a, err = b.startAgent(env.url, env.listen, host)
	if err != nil {
		return res, err
	}
	idx2, err := waitUp(ctx, env.store.Client(), host, tenant, b.n, 2*time.Minute)
	if err != nil {
		return res, fmt.Errorf("resync: %w", err)
	}
	resync := time.Since(start)
	changed := sameIndexes(idx1, idx2)
	res = append(res, Result{Name: fmt.Sprintf("resync_%d", b.n), Value: resync.Seconds(), Unit: "s", Target: "< 1 s, 0 link changes",
		Pass: boolp(resync < time.Second && changed == 0), Note: fmt.Sprintf("agent start to all up; %d links changed", changed)})
	rss := max(rss1, peakRSS(a.cmd.Process.Pid))
	res = append(res, Result{Name: "agent_peak_rss", Value: rss, Unit: "MiB", Note: fmt.Sprintf("netplugin with %d endpoints (etcd is external)", b.n)})

	// Tear down: namespaces go with their veths; the bridge goes with the apply.
	if _, err := env.store.Apply(ctx, state.Document{}, host); err != nil {
		return res, err
	}
	deleteNamespaces(agentNS)
	agentNS = nil
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if _, err := netlink.LinkByName(linuxbridge.BridgeName(host, tenant+"/net")); nl.IsNotFound(err) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return res, nil
}

// floorLinuxbridge wires n namespaces to one bridge the way the driver does, with
// nothing else around it: the kernel's cost.
func (b *bench) floorLinuxbridge(nss []string) (time.Duration, error) {
	brName := b.prefix + "fbr"
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: brName}}); err != nil {
		return 0, err
	}
	defer func() { _ = netlink.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: brName}}) }()
	br, err := netlink.LinkByName(brName)
	if err != nil {
		return 0, err
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return 0, err
	}
	_, sn, _ := net.ParseCIDR("10.91.0.0/22")
	start := time.Now()
	for i, path := range nss {
		h, ns, err := nl.InNS("/var/run/netns/" + path)
		if err != nil {
			return 0, err
		}
		ip := core.IPFromUint(core.IPToUint(sn.IP) + uint32(i) + 1)
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("%sf%d", b.prefix[:4], i), MasterIndex: br.Attrs().Index, Flags: net.FlagUp},
			PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
		if err := netlink.LinkAdd(veth); err != nil {
			ns.Close()
			h.Close()
			return 0, fmt.Errorf("veth %d: %w", i, err)
		}
		peer, err := h.LinkByName("eth0")
		if err == nil {
			err = nl.ConfigureIf(h, peer, nl.ContainerIf{IP: ip.String(), Prefix: 22, Gateway: "10.91.3.254"})
		}
		ns.Close()
		h.Close()
		if err != nil {
			return 0, fmt.Errorf("configure %d: %w", i, err)
		}
	}
	return time.Since(start), nil
}
