package policytest

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/iperf"
	"github.com/netplugin/netplugin/internal/nstest"
)

func tcp(port string) func(*core.Rule) {
	return func(r *core.Rule) { r.Protocol, r.Port = "tcp", port }
}

// Matrix: three groups with policies on two hosts, an endpoint in no
// group, and a second tenant with the same addresses; every pair and port
// behaves as the oracle says, before the endpoints are plugged in (policy
// first) and after the policies change. h1 and h2 are the hosts. It leaves
// everything plugged in for the caller's own checks.
func Matrix(e *Env, h1, h2 Host) {
	a := e.Network("a", "vx", 5201, "10.89.1.0/24")
	b := e.Network("b", "vx", 5202, "10.89.1.0/24") // same addresses, another tenant
	e.Endpoint("web1", "10.89.1.11", a, h1, "web")
	e.Endpoint("db1", "10.89.1.21", a, h1, "db")
	e.Endpoint("cli1", "10.89.1.31", a, h1, "cli")
	e.Endpoint("free1", "10.89.1.41", a, h1, "")
	e.Endpoint("web2", "10.89.1.12", a, h2, "web")
	e.Endpoint("db2", "10.89.1.22", a, h2, "db")
	e.Endpoint("cli2", "10.89.1.32", a, h2, "cli")
	e.Endpoint("bw", "10.89.1.11", b, h1, "bg")
	e.Endpoint("bx", "10.89.1.22", b, h2, "")
	e.Group("a", "web", "vx", "webpol")
	e.Group("a", "db", "vx", "dbpol")
	e.Group("a", "cli", "vx", "clipol")
	e.Group("b", "bg", "vx", "bpol")
	e.Policy("a", "webpol",
		Rule("http", 10, core.DirIn, core.ActionAllow, tcp("80")),
		Rule("nodb", 20, core.DirIn, core.ActionDeny, func(r *core.Rule) { r.FromGroup = "db" }))
	e.Policy("a", "dbpol",
		Rule("pg", 10, core.DirIn, core.ActionAllow, func(r *core.Rule) { r.FromGroup, r.Protocol, r.Port = "web", "tcp", "5432" }),
		Rule("ping", 5, core.DirIn, core.ActionAllow, func(r *core.Rule) { r.FromNetwork, r.Protocol = "vx", "icmp" }),
		Rule("toweb", 10, core.DirOut, core.ActionAllow, func(r *core.Rule) { r.ToGroup = "web" }),
		Rule("dns", 5, core.DirOut, core.ActionAllow, func(r *core.Rule) { r.ToIP, r.Protocol = "10.89.1.0/24", "udp" }))
	e.Policy("a", "clipol",
		Rule("no8080", 50, core.DirOut, core.ActionDeny, tcp("8080")),
		Rule("rest", 1, core.DirOut, core.ActionAllow, nil))
	e.Policy("b", "bpol", Rule("only8080", 10, core.DirIn, core.ActionAllow, tcp("8080")))

	e.Apply(1) // before the endpoints exist: covered from their first packet
	e.Plug(e.Order...)
	e.Serve(e.Order...)
	tenantA := []string{"web1", "db1", "cli1", "free1", "web2", "db2", "cli2"}
	e.Matrix(tenantA...)
	e.Matrix("bw", "bx")

	// The policies change: db's goes, web lets db in on 8080 above its deny.
	e.Model.Groups[1].Policies = nil
	e.Policy("a", "webpol",
		Rule("http", 10, core.DirIn, core.ActionAllow, tcp("80")),
		Rule("nodb", 20, core.DirIn, core.ActionDeny, func(r *core.Rule) { r.FromGroup = "db" }),
		Rule("db8080", 30, core.DirIn, core.ActionAllow, func(r *core.Rule) { r.FromGroup, r.Protocol, r.Port = "db", "tcp", "8080" }))
	e.Apply(2)
	e.Matrix(tenantA...)
}

// LiveStream: a paced TCP stream across hosts lives through 200 updates of
// rules that do not concern it without losing a segment, and stops within
// a second of the update that withdraws its allow.
func LiveStream(e *Env, h1, h2 Host) {
	t := e.T
	n := e.Network("a", "vx", 5401, "10.89.4.0/24")
	e.Endpoint("c", "10.89.4.1", n, h1, "cl")
	e.Endpoint("s", "10.89.4.2", n, h2, "srv")
	e.Group("a", "cl", "vx", "clout")
	e.Group("a", "srv", "vx", "srvin")
	stream := Rule("stream", 50, core.DirIn, core.ActionAllow, func(r *core.Rule) { r.FromGroup, r.Protocol, r.Port = "cl", "tcp", "9000" })
	e.Policy("a", "srvin", stream)
	e.Policy("a", "clout", Rule("any", 1, core.DirOut, core.ActionAllow, nil))
	e.Apply(1)
	e.Plug(e.Order...)
	st := nstest.StartStream(t, e.P+"c", e.P+"s", "10.89.4.2", 9000, 5*time.Millisecond, 1024)
	time.Sleep(300 * time.Millisecond)
	if got, _ := st.Received(); got == 0 {
		t.Fatal("the stream does not flow")
	}
	st.ResetGap()
	lost0, _ := st.Lost()

	var took []time.Duration
	for i := 0; i < 200; i++ {
		rules := []core.Rule{stream}
		for j := 0; j <= i%7; j++ {
			port := fmt.Sprint(20000 + i + j)
			rules = append(rules, Rule(fmt.Sprintf("u%d", j), 10+j, core.DirIn, []string{core.ActionAllow, core.ActionDeny}[j%2], tcp(port)))
		}
		e.Policy("a", "srvin", rules...)
		e.Policy("a", "clout", Rule("any", 1, core.DirOut, core.ActionAllow, nil),
			Rule("no", 5+i%3, core.DirOut, core.ActionDeny, func(r *core.Rule) { r.Protocol, r.Port = "udp", fmt.Sprint(3000+i) }))
		start := time.Now()
		e.Apply(int64(2 + i))
		took = append(took, time.Since(start)/time.Duration(len(e.Hosts)))
	}
	before, _ := st.Received()
	time.Sleep(200 * time.Millisecond)
	if after, _ := st.Received(); after <= before {
		t.Fatal("the stream stopped during the churn")
	}
	if lost, r := st.Lost(); lost > lost0 {
		t.Fatalf("the stream lost %d segments during the churn (%d retransmissions)", lost-lost0, r)
	} else {
		t.Logf("stream: no segment lost; %d early retransmissions, each reported back as a duplicate", r)
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	t.Logf("200 updates: apply per host p50 %v, p99 %v; longest pause of the stream %v", took[100], took[198], st.MaxGap())

	e.Policy("a", "srvin", Rule("other", 50, core.DirIn, core.ActionAllow, tcp("9001")))
	cut := time.Now()
	e.Apply(300)
	// The server keeps speaking after the cut, as servers do: a segment of
	// its own (no SYN, its conntrack entry gone) must not be admitted as a
	// new connection that then lets the client's segments in as replies.
	for range 20 {
		st.Reply()
		time.Sleep(100 * time.Millisecond)
	}
	_, last := st.Received()
	if last.After(cut.Add(time.Second)) {
		t.Fatalf("the stream still flowed %v after its allow was withdrawn", last.Sub(cut))
	}
	t.Logf("stream stopped %v after the withdrawal began", max(last.Sub(cut), 0))
	st.Stop()
}

// Holds: SYNs hammered at endpoints while they are plugged in; none that
// the policy denies is ever accepted, neither for an endpoint whose policy
// came first nor for ones plugged in before their policy (held until it is
// in), on the other host or the same one; a held endpoint passes nothing,
// and once its policy is in, what it allows passes.
func Holds(e *Env, h1, h2 Host) {
	t := e.T
	n := e.Network("a", "vx", 5501, "10.89.5.0/24")
	e.Endpoint("friend", "10.89.5.1", n, h1, "friend")
	e.Endpoint("foe", "10.89.5.2", n, h1, "")
	e.Endpoint("open", "10.89.5.3", n, h2, "")
	e.Endpoint("t1", "10.89.5.11", n, h2, "guarded") // policy first
	e.Endpoint("t2", "10.89.5.12", n, h2, "guarded") // plugged first, remote
	e.Endpoint("t3", "10.89.5.13", n, h1, "guarded") // plugged first, local to the foe
	e.Group("a", "friend", "vx")
	e.Group("a", "guarded", "vx", "gp")
	e.Policy("a", "gp", Rule("web", 10, core.DirIn, core.ActionAllow, func(r *core.Rule) { r.FromGroup, r.Protocol, r.Port = "friend", "tcp", "80" }))
	servers := map[string]*nstest.Server{}
	for _, name := range []string{"open", "t1", "t2", "t3"} {
		servers[name] = nstest.Serve(t, e.P+name, []int{80, 22}, nil)
	}
	all := slices.Clone(e.Model.Endpoints)
	e.Model.Endpoints = all[:4] // t2 and t3 are not in the policy yet
	e.Apply(1)
	e.Plug("friend", "foe", "open")

	var stop atomic.Bool
	var wg sync.WaitGroup
	var tries atomic.Int64
	for _, ip := range []string{"10.89.5.11", "10.89.5.12", "10.89.5.13", "10.89.5.3"} {
		for _, port := range []int{80, 22} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					nstest.TCP(e.P+"foe", ip, port, 100*time.Millisecond)
					tries.Add(1)
				}
			}()
		}
	}
	time.Sleep(300 * time.Millisecond)
	e.Plug("t1", "t2", "t3")
	nstest.MustNotPing(t, e.P+"friend", "10.89.5.12") // held: nothing passes
	if nstest.TCP(e.P+"friend", "10.89.5.13", 80, 500*time.Millisecond) {
		t.Fatal("a held endpoint accepted a connection")
	}
	time.Sleep(time.Second)
	e.Model.Endpoints = all
	e.Apply(2)
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()

	for _, name := range []string{"t1", "t2", "t3"} {
		for _, port := range []int{80, 22} {
			if got := servers[name].Accepted(port); slices.Contains(got, "10.89.5.2") {
				t.Errorf("%s:%d accepted the foe, whom its policy denies", name, port)
			}
		}
		ip := e.EPs[name].IP
		if !nstest.TCP(e.P+"friend", ip, 80, 3*time.Second) {
			t.Errorf("friend cannot reach %s:80, which its policy allows", name)
		}
		if nstest.TCP(e.P+"friend", ip, 22, time.Second) {
			t.Errorf("friend reaches %s:22, which its policy denies", name)
		}
	}
	if got := servers["open"].Accepted(80); len(got) == 0 {
		t.Fatal("the foe's SYNs reached nothing: the hammer proves nothing")
	}
	t.Logf("%d connection attempts by the foe; the open endpoint accepted %d, the guarded ones none", tries.Load(), len(servers["open"].Accepted(80)))
}

// Restart: new drivers on both hosts find the rules in force (and their
// generation) and leave them as they are, also when the same rules come
// under a new generation; allowed traffic loses no packet throughout and
// denied traffic never passes.
func Restart(e *Env, h1, h2 Host) {
	t := e.T
	n := e.Network("a", "vx", 5601, "10.89.6.0/24")
	e.Endpoint("a", "10.89.6.1", n, h1, "cl")
	e.Endpoint("b", "10.89.6.2", n, h2, "srv")
	e.Group("a", "cl", "vx")
	e.Group("a", "srv", "vx", "srvin")
	e.Policy("a", "srvin",
		Rule("udp", 10, core.DirIn, core.ActionAllow, func(r *core.Rule) { r.FromGroup, r.Protocol, r.Port = "cl", "udp", "7000" }),
		Rule("tcp", 10, core.DirIn, core.ActionAllow, func(r *core.Rule) { r.FromGroup, r.Protocol, r.Port = "cl", "tcp", "9000" }))
	e.Apply(1)
	e.Plug(e.Order...)
	allowed := nstest.StartUDPFlow(t, e.P+"a", e.P+"b", "10.89.6.2", 7000, 500)
	denied := nstest.StartUDPFlow(t, e.P+"a", e.P+"b", "10.89.6.2", 7001, 500)
	st := nstest.StartStream(t, e.P+"a", e.P+"b", "10.89.6.2", 9000, 5*time.Millisecond, 1024)
	time.Sleep(500 * time.Millisecond)
	lost0, _ := st.Lost()
	for _, h := range []Host{h1, h2} {
		before := h.Written(t)
		if gen := h.Restart(t, e.Desired(h)); gen != 1 {
			t.Fatalf("%s: a restarted driver finds generation %d, want 1", h.Name(), gen)
		}
		e.Remotes()
		e.Model.Generation = 2
		if gen := h.SetPolicy(t, e.Compile(h)); gen != 2 {
			t.Fatalf("%s: generation %d after the restart", h.Name(), gen)
		}
		if after := h.Written(t); after != before {
			t.Fatalf("%s: the same rules were written again after the restart:\n%s\n%s", h.Name(), before, after)
		}
	}
	time.Sleep(500 * time.Millisecond)
	allowed.Stop()
	denied.Stop()
	time.Sleep(300 * time.Millisecond)
	sent, got := allowed.Counts()
	if lost := allowed.Lost(); sent < 400 || len(lost) > 0 {
		t.Fatalf("allowed traffic: %d datagrams sent, %d received, lost after the first: %v", sent, got, lost)
	}
	if dsent, dgot := denied.Counts(); dsent < 400 || dgot != 0 {
		t.Fatalf("denied traffic: %d sent, %d received", dsent, dgot)
	}
	lost, r := st.Lost()
	if lost > lost0 {
		t.Fatalf("the TCP stream lost %d segments across the restart (%d retransmissions)", lost-lost0, r)
	}
	t.Logf("across the restart: %d allowed datagrams, all received; denied ones received: 0; TCP segments lost: 0", sent)
	st.Stop()
}

// dscpCounter counts, in namespace ns, the IPv4 packets from src and those
// of them that carry dscp.
func dscpCounter(e *Env, ns, src string, dscp int) func() (all, marked int) {
	t := e.T
	nstest.Exec(t, ns, "nft", "add table inet npcount; add chain inet npcount in { type filter hook input priority 0; policy accept; }; "+
		"add rule inet npcount in ip saddr "+src+" counter; add rule inet npcount in ip saddr "+src+" ip dscp "+strconv.Itoa(dscp)+" counter")
	re := regexp.MustCompile(`counter packets (\d+)`)
	return func() (int, int) {
		m := re.FindAllStringSubmatch(nstest.Exec(t, ns, "nft", "list", "chain", "inet", "npcount", "in"), -1)
		if len(m) != 2 {
			t.Fatalf("counters: %v", m)
		}
		a, _ := strconv.Atoi(m[0][1])
		b, _ := strconv.Atoi(m[1][1])
		return a, b
	}
}

// Within checks that got is within [lo, hi] times want, and logs it.
func (e *Env) Within(what string, got, want, lo, hi float64) {
	e.T.Helper()
	r := got / want
	e.T.Logf("%s: %.2f Mbit/s received for %.2f configured (%.3f)", what, got/1e6, want/1e6, r)
	if r < lo || r > hi {
		e.T.Errorf("%s: %.2f Mbit/s is %.3f of the configured %.2f, want %.2f-%.2f", what, got/1e6, r, want/1e6, lo, hi)
	}
}

// ProfileHooks let a driver's test check its own shapers between the steps.
type ProfileHooks struct {
	// Shaped checks that endpoint key is shaped (true) or not; Links
	// returns the ifindexes of what shapes it, which must not change when
	// the profile does.
	Shaped func(key string, shaped bool)
	Links  func(key string) []int
}

// Profiles: a profile shapes both directions of an endpoint (UDP offered
// at 3x the limit arrives within 5% of it, in frame bits; TCP payload
// within -15%/+10%) and marks every packet from it with its DSCP (counted
// at the receiver); a changed rate applies in place (same links); without
// the profile it runs at more than 5x the former limit, unmarked. Tag is
// the VLAN of the host-local network made. udpTol and tcpLo/tcpHi are the
// bounds to check (the issue's: 0.05, 0.85, 1.10).
func Profiles(e *Env, h Host, tag int, hooks ProfileHooks, udpTol, tcpLo, tcpHi float64) {
	t := e.T
	e.Encap = core.EncapVLAN
	n := e.Network("a", "lan", tag, "10.89.7.0/24")
	a := e.Endpoint("a", "10.89.7.1", n, h, "shaped")
	e.Endpoint("b", "10.89.7.2", n, h, "")
	dscp := 46
	e.Model.Groups = append(e.Model.Groups, core.Group{Tenant: n.Tenant, Name: "shaped", Network: "lan", Profile: "p"})
	e.Model.Profiles = []core.Profile{{Tenant: n.Tenant, Name: "p", BandwidthIn: "20mbit", BandwidthOut: "10mbit", DSCP: &dscp}}
	e.Apply(1)
	e.Plug(e.Order...)
	count := dscpCounter(e, e.P+"b", a.IP, dscp)
	hooks.Shaped(a.Key(), true)
	ctx := context.Background()
	run := func(client, server, ip string, o iperf.Options) float64 {
		t.Helper()
		r, err := iperf.Run(ctx, e.P+client, e.P+server, ip, o)
		if err != nil {
			t.Fatal(err)
		}
		return r.BitsPerSecond
	}
	// A shaper's rate counts Ethernet frames, iperf3 counts UDP payload: a
	// 1400-byte datagram is a 1442-byte frame.
	const udpLen = 1400
	frames := func(payload float64) float64 { return payload * (udpLen + 42) / udpLen }
	udp := func(rate string) iperf.Options {
		return iperf.Options{UDP: true, Rate: rate, Length: udpLen, Seconds: 5}
	}
	e.Within("UDP out of a at 30 Mbit/s (frame bits)", frames(run("a", "b", "10.89.7.2", udp("30M"))), 10e6, 1-udpTol, 1+udpTol)
	e.Within("UDP into a at 60 Mbit/s (frame bits)", frames(run("b", "a", "10.89.7.1", udp("60M"))), 20e6, 1-udpTol, 1+udpTol)
	// TCP as payload (a 1448-byte segment is a 1514-byte frame): stricter.
	e.Within("TCP out of a", run("a", "b", "10.89.7.2", iperf.Options{Seconds: 5}), 10e6, tcpLo, tcpHi)
	e.Within("TCP into a", run("b", "a", "10.89.7.1", iperf.Options{Seconds: 5}), 20e6, tcpLo, tcpHi)
	all, marked := count()
	t.Logf("DSCP %d on %d of %d packets from a", dscp, marked, all)
	if all < 1000 || marked != all {
		t.Fatalf("DSCP %d on %d of %d packets from a", dscp, marked, all)
	}

	links := hooks.Links(a.Key())
	e.Model.Profiles[0].BandwidthOut = "20mbit"
	e.Apply(2)
	if now := hooks.Links(a.Key()); !slices.Equal(now, links) {
		t.Fatalf("changing the profile re-created links: %v, were %v", now, links)
	}
	e.Within("UDP out of a at 60 Mbit/s after the change (frame bits)", frames(run("a", "b", "10.89.7.2", udp("60M"))), 20e6, 1-udpTol, 1+udpTol)

	e.Model.Groups[0].Profile = ""
	e.Apply(3)
	hooks.Shaped(a.Key(), false)
	if got := run("a", "b", "10.89.7.2", iperf.Options{Seconds: 3}); got < 5*20e6 {
		t.Fatalf("TCP out of a without a profile: %.1f Mbit/s, want more than 5x the former 20", got/1e6)
	} else {
		t.Logf("TCP out of a without a profile: %.0f Mbit/s", got/1e6)
	}
	allBefore, markedBefore := count()
	nstest.MustPing(t, e.P+"a", "10.89.7.2")
	if all2, marked2 := count(); all2 <= allBefore || marked2 != markedBefore {
		t.Fatalf("packets marked after the profile went: %d of %d", marked2-markedBefore, all2-allBefore)
	}
	e.Model.Groups[0].Profile = "p"
	e.Apply(4)
	hooks.Shaped(a.Key(), true)
}
