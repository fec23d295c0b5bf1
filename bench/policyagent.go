package main

// policy_apply_p99: a rule written to etcd until every host of its group
// enforces it, on a scripts/cluster fleet of two hosts (real etcd, real
// agents, linuxbridge VXLAN), with 1,000 rules and 100 endpoints in place;
// and the same with one rule and four endpoints, in the same run, as the
// baseline.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// policyAgents is the policyagents group: policy_apply_p99 and its baseline.
func (b *bench) policyAgents(ctx context.Context) ([]Result, error) {
	f, err := b.startFleet(ctx, 2)
	if err != nil {
		return nil, err
	}
	defer f.close()
	base, err := f.policyFlip(ctx, "pb", 1, 4, 20)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	full, err := f.policyFlip(ctx, "pf", 250, 100, 40)
	if err != nil {
		return nil, err
	}
	return []Result{
		{Name: "policy_apply_p99", Value: full.p99, Unit: "ms", Target: "<= 500", Pass: boolp(full.p99 <= 500),
			Note: fmt.Sprintf("2 hosts (scripts/cluster, real agents, linuxbridge VXLAN), 100 endpoints, 4 groups of 250 rules: store write of a rule until a probe connection into the group flips on both hosts, p50 %.1f ms over %d writes (allow, then delete, alternately)", full.p50, full.n)},
		{Name: "policy_apply_p99_baseline", Value: base.p99, Unit: "ms",
			Note: fmt.Sprintf("same fleet and run, 4 endpoints and one rule: p50 %.1f ms over %d writes", base.p50, base.n)},
	}, nil
}

type flipTimes struct {
	p50, p99 float64
	n        int
}

// policyFlip builds tenant name's network across both hosts with eps
// endpoints (half on each host; one per host in group probe, the others in
// groups g0-g3 whose policies have rules rules each), then reps times writes
// or deletes a rule of g0's policy letting probe in on TCP 9000 and times the
// write until each host's probe flips towards the other host's g0 endpoint.
func (f *fleetEnv) policyFlip(ctx context.Context, name string, rules, eps, reps int) (flipTimes, error) {
	s := f.store
	tenant := f.b.prefix + name
	var ft flipTimes
	if err := s.CreateTenant(ctx, tenant); err != nil {
		return ft, err
	}
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()
	bg := context.WithoutCancel(ctx)
	undo = append(undo, func() { _ = s.DeleteTenant(bg, tenant) })
	if _, err := s.CreateNetwork(ctx, core.Network{Tenant: tenant, Name: "lan", Driver: "linuxbridge", Encap: core.EncapVXLAN,
		Subnet: "10.122.0.0/22"}); err != nil {
		return ft, err
	}
	undo = append(undo, func() { _ = s.DeleteNetwork(bg, tenant, "lan") })
	if _, err := s.CreateGroup(ctx, core.Group{Tenant: tenant, Name: "probe", Network: "lan"}); err != nil {
		return ft, err
	}
	undo = append(undo, func() { _ = s.DeleteGroup(bg, tenant, "probe") })
	for i := 0; i < 4; i++ {
		pol := fmt.Sprintf("p%d", i)
		if _, err := s.CreatePolicy(ctx, core.Policy{Tenant: tenant, Name: pol, Rules: manyRules(rules, core.DirIn)}); err != nil {
			return ft, err
		}
		undo = append(undo, func() { _ = s.DeletePolicy(bg, tenant, pol) })
		g := fmt.Sprintf("g%d", i)
		if _, err := s.CreateGroup(ctx, core.Group{Tenant: tenant, Name: g, Network: "lan", Policies: []string{pol}}); err != nil {
			return ft, err
		}
		undo = append(undo, func() { _ = s.DeleteGroup(bg, tenant, g) })
	}
	type member struct{ ns, ip string }
	var probes, targets [2]member
	var all []core.Endpoint
	for i := 0; i < eps; i++ {
		host := i % 2
		ns, err := f.endpointNS(fmt.Sprintf("%s%d", name, i))
		if err != nil {
			return ft, err
		}
		e := core.Endpoint{Tenant: tenant, Network: "lan", Name: fmt.Sprintf("e%d", i), IP: fmt.Sprintf("10.122.%d.%d", (i+1)/256, (i+1)%256),
			Host: fmt.Sprintf("h%d", host+1), NetNS: ns, Group: fmt.Sprintf("g%d", (i/2)%4)}
		switch i {
		case 0, 1:
			e.Group = "probe"
			probes[host] = member{ns, e.IP}
		case 2, 3:
			targets[host] = member{ns, e.IP}
			e.Group = "g0"
		}
		all = append(all, e)
	}
	if err := forEach(all, 8, func(e core.Endpoint) error {
		_, err := s.CreateEndpoint(ctx, e, 0)
		return err
	}); err != nil {
		return ft, err
	}
	for _, e := range all {
		undo = append(undo, func() { _ = s.DeleteEndpoint(bg, tenant, e.Name) })
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for _, tg := range targets {
		// The address appears once the target's host has plugged it in.
		var l net.Listener
		for deadline := time.Now().Add(120 * time.Second); ; {
			err := nstest.InNS(tg.ns, func() error {
				var err error
				l, err = netListen(tg.ip, 9000)
				return err
			})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return ft, err
			}
			time.Sleep(100 * time.Millisecond)
		}
		ls = append(ls, l)
	}
	// Each host's probe towards the other host's target: the flip must be
	// enforced where each target lives.
	// Both at once, each waiting 20 ms for a handshake (a round trip here is
	// well under 1 ms), so that the probe adds little to what it measures.
	flipped := func(want bool) bool {
		var got [2]bool
		var wg sync.WaitGroup
		for h := 0; h < 2; h++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[h] = nstest.TCP(probes[h].ns, targets[1-h].ip, 9000, 20*time.Millisecond) == want
			}()
		}
		wg.Wait()
		return got[0] && got[1]
	}
	// Every endpoint in the policy both hosts enforce, the probes meeting
	// across the hosts (group probe is open) and closed to the targets.
	// Both hosts serve lan, so each view holds every endpoint: the last
	// endpoint write is in the generation each reports once it is enforced.
	var last int64
	for _, e := range all {
		_, rev, err := s.GetEndpoint(ctx, tenant, e.Name)
		if err != nil {
			return ft, err
		}
		last = max(last, rev)
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		st, err := s.PolicyStatuses(ctx, "h1", "h2")
		if err != nil {
			return ft, err
		}
		if st["h1"].Generation >= last && st["h2"].Generation >= last &&
			pingable(probes[0].ns, probes[1].ip) && pingable(probes[1].ns, probes[0].ip) && flipped(false) {
			break
		}
		if time.Now().After(deadline) {
			return ft, fmt.Errorf("%s: the hosts never enforced the policy of revision %d (%+v)", tenant, last, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	allow := core.Rule{Name: "probe", Priority: 100, Direction: core.DirIn, Action: core.ActionAllow, FromGroup: "probe", Protocol: "tcp", Port: "9000"}
	var lat []float64
	for r := 0; r < reps; r++ {
		want := r%2 == 0
		start := time.Now()
		var err error
		if want {
			_, err = s.AddRule(ctx, tenant, "p0", allow)
		} else {
			_, err = s.DeleteRule(ctx, tenant, "p0", "probe")
		}
		if err != nil {
			return ft, err
		}
		for !flipped(want) {
			if time.Since(start) > 20*time.Second {
				return ft, fmt.Errorf("%s: the probes never flipped to %v", tenant, want)
			}
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	if len(lat)%2 == 1 {
		_, _ = s.DeleteRule(ctx, tenant, "p0", "probe")
	}
	slices.Sort(lat)
	ft = flipTimes{p50: lat[len(lat)/2], p99: lat[min(len(lat)-1, len(lat)*99/100)], n: len(lat)}
	return ft, nil
}

// pingable reports whether one echo from ns reaches ip within a second.
func pingable(ns, ip string) bool {
	p, err := newPinger(ns)
	if err != nil {
		return false
	}
	defer p.close()
	return p.echo(ip, time.Second)
}
