package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// ep is an endpoint in a namespace of its own (a "container") on one host.
type ep struct {
	tenant, net, name, host, ip string
	ns                          string // set by addEP
}

// addEP makes ep's namespace (deleted at the end of the test) and creates the
// endpoint with netdcli on its host, attached to that namespace.
func (c *cluster) addEP(t *testing.T, p string, e *ep) {
	t.Helper()
	e.ns = nstest.NS(t, p+"-"+e.name)
	c.netdcli(t, e.host, "-oper", "create", "-construct", "endpoint", "-tenant", e.tenant, "-net-id", e.net,
		"-ip-address", e.ip, "-host", e.host, "-netns", e.ns, e.name)
}

// endpointView is what `netdcli -json get` prints of an endpoint.
type endpointView struct {
	core.Endpoint
	Status map[string]core.EndpointStatus `json:"status"`
}

// endpoints lists tenant's endpoints with their status, as host h's netdcli sees them.
func (c *cluster) endpoints(t testing.TB, h, tenant string) map[string]endpointView {
	t.Helper()
	var views []endpointView
	out := c.netdcli(t, h, "-oper", "get", "-construct", "endpoint", "-tenant", tenant, "-json")
	if err := json.Unmarshal([]byte(out), &views); err != nil {
		t.Fatalf("netdcli -json: %v: %s", err, out)
	}
	m := map[string]endpointView{}
	for _, v := range views {
		m[v.Name] = v
	}
	return m
}

// waitUp waits until every ep reports up on its host, and returns each one's
// ifindex (of its host-side link) by name.
func (c *cluster) waitUp(t testing.TB, within time.Duration, eps ...*ep) map[string]int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		idx := map[string]int{}
		var missing []string
		byTenant := map[string]map[string]endpointView{}
		for _, e := range eps {
			if byTenant[e.tenant] == nil {
				byTenant[e.tenant] = c.endpoints(t, "h1", e.tenant)
			}
			if st, ok := byTenant[e.tenant][e.name].Status[e.host]; ok && st.State == core.StateUp {
				idx[e.name] = st.IfIndex
			} else {
				missing = append(missing, fmt.Sprintf("%s@%s (%s %s)", e.name, e.host, st.State, st.Error))
			}
		}
		if len(missing) == 0 {
			return idx
		}
		if time.Now().After(deadline) {
			t.Fatalf("not up after %v: %s", within, strings.Join(missing, ", "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitFor polls cond every 100 ms until it holds, and returns how long that took.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

// reachable waits until from pings to (a first packet across hosts waits for
// ARP on both sides and the tunnel's neighbour), then requires it steadily.
func reachable(t testing.TB, from, to *ep) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("%s@%s pings %s@%s", from.name, from.host, to.name, to.host),
		func() bool { return nstest.Ping(from.ns, to.ip) })
	nstest.MustPing(t, from.ns, to.ip)
}

// meshReachable proves that every endpoint pings every other one.
func meshReachable(t testing.TB, eps []*ep) {
	t.Helper()
	for _, a := range eps {
		for _, b := range eps {
			if a != b {
				reachable(t, a, b)
			}
		}
	}
}

// isolated proves that from does not reach to: a few echoes, none answered.
func isolated(t testing.TB, from, to *ep) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", from.ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", to.ip).CombinedOutput()
	if err == nil || !strings.Contains(string(out), " 0 received") {
		t.Fatalf("%s@%s reaches %s (%s@%s) but must be isolated from it:\n%s", from.name, from.host, to.ip, to.name, to.host, out)
	}
}

// pinger is a ping running in the background, at a fixed interval.
type pinger struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	what string
}

// startPing sends count echoes from one endpoint to another, one per interval.
func startPing(t testing.TB, from, to *ep, interval time.Duration, count int) *pinger {
	t.Helper()
	p := &pinger{what: fmt.Sprintf("%s@%s -> %s@%s", from.name, from.host, to.name, to.host)}
	// Every reply is printed with its time (-D), so that a loss can be told
	// apart from a late reply and placed among the test's events.
	p.cmd = exec.Command("ip", "netns", "exec", from.ns, "ping", "-n", "-D", "-c", strconv.Itoa(count),
		"-i", fmt.Sprintf("%.3f", interval.Seconds()), "-W", "1", to.ip)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	return p
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// wait returns how many echoes were sent and answered.
func (p *pinger) wait(t testing.TB) (sent, received int) {
	t.Helper()
	_ = p.cmd.Wait() // non-zero when echoes were lost: the counts tell
	m := pingStats.FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("ping %s: no statistics:\n%s", p.what, p.out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received
}

// noLoss waits for the ping and fails the test if one echo was lost.
func (p *pinger) noLoss(t testing.TB) {
	t.Helper()
	sent, received := p.wait(t)
	t.Logf("ping %s: %d sent, %d received", p.what, sent, received)
	if sent == 0 || received != sent {
		t.Fatalf("ping %s lost %d of %d echoes: %s", p.what, sent-received, sent, p.losses(sent))
	}
}

var pingReply = regexp.MustCompile(`(?m)^\[(\d+)\.(\d+)\] .*icmp_seq=(\d+) .*time=([\d.]+) ms`)

// losses names the echoes of 1..sent that got no reply, each with the time
// of the last reply before it and that reply's round trip, and the slowest
// reply: a starved machine shows as slow replies around the gap, a
// dataplane that dropped as a gap among fast ones.
func (p *pinger) losses(sent int) string {
	type reply struct {
		at  time.Time
		rtt string
	}
	got := map[int]reply{}
	slowest, slowSeq := 0.0, 0
	for _, m := range pingReply.FindAllStringSubmatch(p.out.String(), -1) {
		sec, _ := strconv.ParseInt(m[1], 10, 64)
		usec, _ := strconv.ParseInt((m[2] + "000000")[:6], 10, 64)
		seq, _ := strconv.Atoi(m[3])
		got[seq] = reply{time.Unix(sec, usec*1000).UTC(), m[4]}
		if rtt, _ := strconv.ParseFloat(m[4], 64); rtt > slowest {
			slowest, slowSeq = rtt, seq
		}
	}
	var b strings.Builder
	shown := 0
	for seq := 1; seq <= sent; seq++ {
		if _, ok := got[seq]; ok {
			continue
		}
		if shown++; shown > 10 {
			b.WriteString(" …")
			break
		}
		fmt.Fprintf(&b, "seq %d (", seq)
		if prev, ok := got[seq-1]; ok {
			fmt.Fprintf(&b, "after a reply at %s in %s ms", prev.at.Format("15:04:05.000"), prev.rtt)
		} else {
			b.WriteString("after another loss")
		}
		b.WriteString("); ")
	}
	fmt.Fprintf(&b, "slowest reply seq %d in %.1f ms", slowSeq, slowest)
	return b.String()
}

// links lists the links of host h's namespace as "name ifindex", sorted: two
// equal lists mean nothing was made, removed or re-created.
func (c *cluster) links(t testing.TB, h string) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", c.ns(h), "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("links of %s: %v", h, err)
	}
	var l []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			l = append(l, name+" "+strings.TrimSuffix(f[0], ":"))
		}
	}
	sort.Strings(l)
	return l
}

// ovsPorts lists host h's OVS interfaces with their ofport, sorted: with
// tunnels false all but the VXLAN ports, with tunnels true only those.
func (c *cluster) ovsPorts(t testing.TB, h string, tunnels bool) []string {
	t.Helper()
	out := c.exec(t, h, "ovs-vsctl", "--format=csv", "--no-headings", "--columns=name,ofport,type", "list", "Interface")
	var l []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasSuffix(line, ",vxlan") == tunnels {
			l = append(l, line)
		}
	}
	sort.Strings(l)
	return l
}

// tunnelTo reports whether host h's OVS has a VXLAN port towards host peer.
func (c *cluster) tunnelTo(t testing.TB, h, peer string) bool {
	t.Helper()
	out := c.exec(t, h, "ovs-vsctl", "--columns=options", "find", "Interface", "type=vxlan")
	return strings.Contains(out, `remote_ip="`+c.vtep(peer)+`"`)
}

// allocatedIPs lists the IP allocations of a network, read from etcd itself.
func (c *cluster) allocatedIPs(t testing.TB, h, tenant, net string) []string {
	t.Helper()
	out := c.exec(t, h, "etcdctl", "get", "--prefix", "--keys-only", "/netplugin/v1/alloc/ip/"+tenant+"/"+net+"/")
	var ips []string
	for _, k := range strings.Fields(out) {
		ips = append(ips, k[strings.LastIndexByte(k, '/')+1:])
	}
	sort.Strings(ips)
	return ips
}

// dump is every key and value under netplugin's prefix, for before/after comparisons.
func (c *cluster) dump(t testing.TB, h string) string {
	t.Helper()
	return c.exec(t, h, "etcdctl", "get", "--prefix", "/netplugin/v1/config/")
}

// sameList fails the test unless two sorted lists are equal.
func sameList(t testing.TB, what string, before, after []string) {
	t.Helper()
	if strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Fatalf("%s changed:\nbefore:\n%s\nafter:\n%s", what, strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
}
