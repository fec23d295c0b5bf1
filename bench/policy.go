package main

// policy_throughput, qos_accuracy and policy_apply_driver: the policy and
// profile dataplane of the linuxbridge and OVS drivers, driven directly (no
// agent, no etcd; policyagent.go measures that path), on a simulated host
// namespace of this benchmark's own.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/drivers/ovs"
	"github.com/netplugin/netplugin/internal/iperf"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/nstest"
)

// polDriver is a driver under benchmark with the calls it needs, each run
// where that driver works.
type polDriver interface {
	core.Driver
	core.PolicyEnforcer
}

// polEnv is one simulated host with a host-local network and endpoints.
type polEnv struct {
	b       *bench
	name    string // linuxbridge or ovs
	host    string // host namespace
	drv     polDriver
	in      func(f func() error) error // runs f where drv works
	net     core.NetworkSpec
	eps     []core.EndpointSpec
	nss     []string
	model   core.PolicyModel
	cleanup []func()
}

func (e *polEnv) close() {
	for i := len(e.cleanup) - 1; i >= 0; i-- {
		e.cleanup[i]()
	}
	for _, ns := range e.nss {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

func (e *polEnv) ns(name string) (string, error) {
	ns := e.b.prefix + name
	if err := run("ip", "netns", "add", ns); err != nil {
		return "", err
	}
	e.nss = append(e.nss, ns)
	return ns, run("ip", "-n", ns, "link", "set", "lo", "up")
}

// startPolEnv makes the host and n endpoints of one network, "e0".."e<n-1>".
func (b *bench) startPolEnv(ctx context.Context, name string, n int) (*polEnv, error) {
	e := &polEnv{b: b, name: name}
	fail := func(err error) (*polEnv, error) { e.close(); return nil, err }
	var err error
	if e.host, err = e.ns("p" + name[:1] + "h"); err != nil {
		return fail(err)
	}
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetLevel(logrus.WarnLevel)
	switch name {
	case "linuxbridge":
		d, err := linuxbridge.New(log, linuxbridge.Config{Host: e.host})
		if err != nil {
			return fail(err)
		}
		e.drv = d
		e.in = func(f func() error) error { return nstest.InNS(e.host, f) }
	case "ovs":
		o, err := startOVSIn(e.host)
		if err != nil {
			return fail(err)
		}
		e.cleanup = append(e.cleanup, o.stop)
		d, err := ovs.New(ctx, ovs.Config{Host: e.host, OVSDB: "unix:" + o.sock(), RunDir: o.dir, DatapathType: "netdev",
			HostNetNS: "/var/run/netns/" + e.host, VswitchdCtl: filepath.Join(o.dir, "vswitchd.ctl")}, log)
		if err != nil {
			return fail(err)
		}
		e.cleanup = append(e.cleanup, func() { _ = d.Close() })
		e.drv = d
		e.in = func(f func() error) error { return f() }
	}
	tenant := b.prefix + "p"
	e.net = core.NetworkSpec{Network: core.Network{Tenant: tenant, Name: "lan", Driver: name, Encap: core.EncapVLAN, Tag: 3001,
		Subnet: "10.91.0.0/22", Gateway: "10.91.3.254"}}
	e.model.Networks = []core.Network{e.net.Network}
	for i := 0; i < n; i++ {
		ns, err := e.ns(fmt.Sprintf("p%se%d", name[:1], i))
		if err != nil {
			return fail(err)
		}
		id, err := nl.NetNSID("/var/run/netns/" + ns)
		if err != nil {
			return fail(err)
		}
		ep := core.EndpointSpec{Endpoint: core.Endpoint{Tenant: tenant, Network: "lan", Name: fmt.Sprintf("e%d", i),
			IP: fmt.Sprintf("10.91.%d.%d", (i+1)/256, (i+1)%256), MAC: fmt.Sprintf("02:42:0a:5b:%02x:%02x", (i+1)/256, (i+1)%256), Host: e.host},
			Net: e.net, NetNSPath: "/var/run/netns/" + ns, NetNSID: id}
		e.eps = append(e.eps, ep)
	}
	err = e.in(func() error {
		if err := e.drv.EnsureNetwork(ctx, e.net); err != nil {
			return err
		}
		for _, ep := range e.eps {
			if _, err := e.drv.EnsureEndpoint(ctx, ep); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	e.cleanup = append(e.cleanup, func() {
		_ = e.in(func() error {
			_, _ = e.drv.SetPolicy(ctx, core.HostPolicy{Generation: 1 << 40})
			for _, ep := range e.eps {
				_ = e.drv.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: ep.Key()})
			}
			return e.drv.RemoveNetwork(ctx, core.ObservedNetwork{Key: e.net.Key()})
		})
	})
	ip := e.eps[1].IP
	for deadline := time.Now().Add(20 * time.Second); exec.Command("ip", "netns", "exec", e.nss[1], "ping", "-c1", "-W1", ip).Run() != nil; {
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("%s: endpoints never reached each other", name))
		}
	}
	return e, nil
}

// apply compiles the model and applies it; it returns how long SetPolicy took.
func (e *polEnv) apply(ctx context.Context, gen int64) (time.Duration, error) {
	e.model.Generation = gen
	hp, errs := core.CompileHost(e.model, e.host, e.name)
	if len(errs) > 0 {
		return 0, errors.Join(errs...)
	}
	for i, pe := range hp.Endpoints {
		for _, ep := range e.eps {
			if ep.Key() == pe.Key {
				hp.Endpoints[i].NetNSPath = ep.NetNSPath
			}
		}
	}
	var took time.Duration
	err := e.in(func() error {
		start := time.Now()
		_, err := e.drv.SetPolicy(ctx, hp)
		took = time.Since(start)
		return err
	})
	return took, err
}

// manyRules are n rules of direction dir from distinct /32 peers to varied
// TCP ports, allows and denies, priorities 1-99 (under keep's 100).
func manyRules(n int, dir string) []core.Rule {
	rules := make([]core.Rule, 0, n)
	for i := 0; i < n; i++ {
		r := core.Rule{Name: fmt.Sprintf("r%d", i), Priority: 1 + i%99, Direction: dir, Action: core.ActionAllow,
			Protocol: "tcp", Port: fmt.Sprint(10000 + i%20000)}
		if i%3 == 0 {
			r.Action = core.ActionDeny
		}
		ip := fmt.Sprintf("172.%d.%d.%d", 16+i/65536%16, i/256%256, i%256)
		if dir == core.DirIn {
			r.FromIP = ip
		} else {
			r.ToIP = ip
		}
		rules = append(rules, r)
	}
	return rules
}

func (b *bench) policy(ctx context.Context) ([]Result, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, errors.New("needs iperf3 (apt-get install iperf3)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, errors.New("needs nft (apt-get install nftables)")
	}
	var res []Result
	for _, name := range []string{"linuxbridge", "ovs"} {
		r, err := b.policyOn(ctx, name)
		res = append(res, r...)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
	}
	return res, nil
}

func (b *bench) policyOn(ctx context.Context, name string) ([]Result, error) {
	e, err := b.startPolEnv(ctx, name, 2)
	if err != nil {
		return nil, err
	}
	defer e.close()
	var res []Result
	cli, srv := e.eps[0], e.eps[1]
	cli.Group, srv.Group = "cl", "srv"
	e.model.Endpoints = []core.Endpoint{cli.Endpoint, srv.Endpoint}
	e.model.Groups = []core.Group{{Tenant: cli.Tenant, Name: "cl", Network: "lan", Policies: []string{"out"}},
		{Tenant: cli.Tenant, Name: "srv", Network: "lan", Policies: []string{"in"}}}
	const n = 10000
	keepIn := core.Rule{Name: "iperf", Priority: 100, Direction: core.DirIn, Action: core.ActionAllow, FromGroup: "cl", Protocol: "tcp", Port: "5201"}
	keepOut := core.Rule{Name: "iperf", Priority: 100, Direction: core.DirOut, Action: core.ActionAllow, ToGroup: "srv", Protocol: "tcp", Port: "5201"}
	withRules := func() {
		e.model.Policies = []core.Policy{
			{Tenant: cli.Tenant, Name: "in", Rules: append([]core.Rule{keepIn}, manyRules(n/2-1, core.DirIn)...)},
			{Tenant: cli.Tenant, Name: "out", Rules: append([]core.Rule{keepOut}, manyRules(n/2-1, core.DirOut)...)}}
	}
	none := func() {
		e.model.Policies = []core.Policy{{Tenant: cli.Tenant, Name: "in"}, {Tenant: cli.Tenant, Name: "out"}}
	}
	// The same policy with only the iperf allows: conntrack and the per-port
	// checks in force, but not the 10,000 rules. It tells what the rules
	// themselves cost apart from being stateful at all.
	oneRule := func() {
		e.model.Policies = []core.Policy{{Tenant: cli.Tenant, Name: "in", Rules: []core.Rule{keepIn}},
			{Tenant: cli.Tenant, Name: "out", Rules: []core.Rule{keepOut}}}
	}
	const (
		modeNone = iota
		modeOne
		modeMany
	)
	set := []func(){none, oneRule, withRules}
	// Rounds back to back, each measuring the three modes in a rotated
	// order: this machine's load drifts more between rounds than the rules
	// cost, so each round's ratios are taken, and their medians reported.
	const rounds, secs = 9, 3
	rates := map[int][]float64{}
	var ratios, ratiosOne []float64
	var loads []time.Duration
	gen := int64(1)
	for r := 0; r < rounds; r++ {
		got := map[int]float64{}
		for k := 0; k < 3; k++ {
			mode := (r + k) % 3
			set[mode]()
			took, err := e.apply(ctx, gen)
			gen++
			if err != nil {
				return res, err
			}
			if mode == modeMany {
				loads = append(loads, took)
			}
			v, err := iperf.Run(ctx, e.nss[1], e.nss[2], srv.IP, iperf.Options{Seconds: secs})
			if err != nil {
				return res, err
			}
			got[mode] = v.BitsPerSecond / 1e9
			rates[mode] = append(rates[mode], got[mode])
		}
		ratios = append(ratios, got[modeMany]/got[modeNone])
		ratiosOne = append(ratiosOne, got[modeMany]/got[modeOne])
	}
	median := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	ratio := median(ratios)
	res = append(res,
		Result{Name: "policy_throughput_" + name, Value: ratio, Unit: "ratio", Target: ">= 0.9", Pass: boolp(ratio >= 0.9),
			Note: fmt.Sprintf("iperf3 TCP between two endpoints of one host with %d rules in force (%d in, %d out, on the two ends' groups) vs none; median of %d rounds of %ds each: ratios %.2f; medians %.2f (rules) vs %.2f (none) Gbit/s",
				n, n/2, n/2, rounds, secs, ratios, median(rates[modeMany]), median(rates[modeNone]))},
		Result{Name: "policy_throughput_vs_1rule_" + name, Value: median(ratiosOne), Unit: "ratio",
			Note: fmt.Sprintf("the same %d rules vs a policy of only the iperf allows (stateful, same per-port checks) in the same rounds: ratios %.2f; medians %.2f vs %.2f Gbit/s: what the rules cost beyond conntrack",
				n, ratiosOne, median(rates[modeMany]), median(rates[modeOne]))},
		Result{Name: "policy_load_10k_" + name, Value: median(durationsMs(loads)), Unit: "ms",
			Note: fmt.Sprintf("SetPolicy of the %d rules over a policy without them, compile excluded, median of %d", n, rounds)})

	// qos_accuracy: a profile on the client; UDP offered at 3x (frame bits,
	// 1400-byte datagrams), TCP payload.
	none()
	cli.Group, srv.Group = "shaped", ""
	e.model.Endpoints = []core.Endpoint{cli.Endpoint, srv.Endpoint}
	e.model.Groups = []core.Group{{Tenant: cli.Tenant, Name: "shaped", Network: "lan", Profile: "p"}}
	for _, mbit := range []int{1, 10, 100} {
		e.model.Profiles = []core.Profile{{Tenant: cli.Tenant, Name: "p", BandwidthOut: fmt.Sprintf("%dmbit", mbit)}}
		if _, err := e.apply(ctx, gen); err != nil {
			return res, err
		}
		gen++
		limit := float64(mbit) * 1e6
		u, err := iperf.Run(ctx, e.nss[1], e.nss[2], srv.IP, iperf.Options{UDP: true, Rate: fmt.Sprintf("%dM", 3*mbit), Length: 1400, Seconds: 5})
		if err != nil {
			return res, err
		}
		t, err := iperf.Run(ctx, e.nss[1], e.nss[2], srv.IP, iperf.Options{Seconds: 5})
		if err != nil {
			return res, err
		}
		ur := u.BitsPerSecond * 1442 / 1400 / limit
		tr := t.BitsPerSecond / limit
		res = append(res,
			Result{Name: fmt.Sprintf("qos_accuracy_udp_%dmbit_%s", mbit, name), Value: ur, Unit: "ratio", Target: "0.95-1.05", Pass: boolp(ur >= 0.95 && ur <= 1.05),
				Note: fmt.Sprintf("UDP out of an endpoint offered at %d Mbit/s, received at %.3f Mbit/s (frame bits; payload %.3f)", 3*mbit, u.BitsPerSecond*1442/1400/1e6, u.BitsPerSecond/1e6)},
			Result{Name: fmt.Sprintf("qos_accuracy_tcp_%dmbit_%s", mbit, name), Value: tr, Unit: "ratio", Target: "0.85-1.10", Pass: boolp(tr >= 0.85 && tr <= 1.10),
				Note: fmt.Sprintf("TCP out of an endpoint, received payload %.3f Mbit/s", t.BitsPerSecond/1e6)})
	}
	return res, nil
}

func durationsMs(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d.Microseconds()) / 1000
	}
	return out
}

// policyApply is policy_apply_driver: with 1,000 rules and 100 endpoints in
// place on one host, how long from the start of an update (compile
// included) until probe traffic flips.
func (b *bench) policyApply(ctx context.Context) ([]Result, error) {
	var res []Result
	for _, name := range []string{"linuxbridge", "ovs"} {
		r, err := b.policyApplyOn(ctx, name)
		res = append(res, r...)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
	}
	return res, nil
}

func (b *bench) policyApplyOn(ctx context.Context, name string) ([]Result, error) {
	e, err := b.startPolEnv(ctx, name, 100)
	if err != nil {
		return nil, err
	}
	defer e.close()
	tenant := e.net.Tenant
	e.model.Endpoints = nil
	for i, ep := range e.eps {
		ep.Group = []string{"g0", "g1", "g2", "g3"}[i%4]
		if i == 0 {
			ep.Group = "probe"
		}
		e.model.Endpoints = append(e.model.Endpoints, ep.Endpoint)
	}
	for i := 0; i < 4; i++ {
		e.model.Groups = append(e.model.Groups, core.Group{Tenant: tenant, Name: fmt.Sprintf("g%d", i), Network: "lan", Policies: []string{fmt.Sprintf("p%d", i)}})
		e.model.Policies = append(e.model.Policies, core.Policy{Tenant: tenant, Name: fmt.Sprintf("p%d", i), Rules: manyRules(250, core.DirIn)})
	}
	e.model.Groups = append(e.model.Groups, core.Group{Tenant: tenant, Name: "probe", Network: "lan"})
	target := e.eps[4] // in g0
	probe := func() bool { return nstest.TCP(e.nss[1], target.IP, 9000, 50*time.Millisecond) }
	srvNS := e.nss[1+4]
	var l net.Listener
	if err := nstest.InNS(srvNS, func() error {
		var err error
		l, err = netListen(target.IP, 9000)
		return err
	}); err != nil {
		return nil, err
	}
	defer l.Close()
	p0 := &e.model.Policies[0]
	base := slices.Clone(p0.Rules)
	allow := core.Rule{Name: "probe", Priority: 100, Direction: core.DirIn, Action: core.ActionAllow, FromGroup: "probe", Protocol: "tcp", Port: "9000"}
	if _, err := e.apply(ctx, 1); err != nil {
		return nil, err
	}
	var lat []float64
	for i := 0; i < 40; i++ {
		want := i%2 == 0
		if want {
			p0.Rules = append(slices.Clone(base), allow)
		} else {
			p0.Rules = base
		}
		start := time.Now()
		if _, err := e.apply(ctx, int64(2+i)); err != nil {
			return nil, err
		}
		for probe() != want {
			if time.Since(start) > 10*time.Second {
				return nil, fmt.Errorf("probe never flipped to %v", want)
			}
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	return []Result{{Name: "policy_apply_driver_p99_" + name, Value: p99, Unit: "ms", Target: "<= 500", Pass: boolp(p99 <= 500),
		Note: fmt.Sprintf("one host, 100 endpoints, 1,000 rules: compile + SetPolicy until a probe connection flips, p50 %.1f ms over %d updates; policy_apply_p99 is the etcd write to all hosts of a group", p50, len(lat))}}, nil
}

func netListen(ip string, port int) (net.Listener, error) {
	l, err := net.Listen("tcp4", net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		return nil, err
	}
	go func() { // accept and close, until closed
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	return l, nil
}
