package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/state"
)

// fleetEnv is a fleet made by scripts/cluster (a TLS etcd cluster, OVS, dockerd
// and an agent in each host namespace), with a store client that reaches the
// cluster's etcd from inside h1's namespace: nothing of it is routed from here.
type fleetEnv struct {
	b      *bench
	dir    string
	prefix string // of its namespaces
	n      int
	store  *state.Store
	tls    *tls.Config
	nss    []string // endpoint namespaces the benchmark made
}

func (f *fleetEnv) hostNS(i int) string { return fmt.Sprintf("/var/run/netns/%s-h%d", f.prefix, i) }

func (f *fleetEnv) script(args ...string) error {
	cmd := exec.Command("scripts/cluster", args...)
	cmd.Env = append(os.Environ(), "NP_CLUSTER_DIR="+f.dir, "NP_CLUSTER_BIN="+filepath.Dir(f.b.netplugin),
		// Plain networks span the hosts the way a fleet's users make them.
		"NP_CLUSTER_GLOBAL=-driver linuxbridge -tag-type vxlan")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("scripts/cluster %s: %v: %s", strings.Join(args, " "), err, tail(string(out), 10))
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (b *bench) startFleet(ctx context.Context, n int) (*fleetEnv, error) {
	f := &fleetEnv{b: b, n: n, dir: fmt.Sprintf("/tmp/%sf%d", b.prefix, n)}
	if err := f.script("up", "-n", strconv.Itoa(n)); err != nil {
		_ = f.script("down")
		return nil, err
	}
	env, err := os.ReadFile(filepath.Join(f.dir, "cluster.env"))
	if err != nil {
		f.close()
		return nil, err
	}
	for _, l := range strings.Split(string(env), "\n") {
		if v, ok := strings.CutPrefix(l, "PREFIX="); ok {
			f.prefix = strings.Trim(v, `"'`)
		}
	}
	var eps []string
	for i := 1; i <= n; i++ {
		eps = append(eps, fmt.Sprintf("https://172.30.0.%d:2379", i))
	}
	pki := filepath.Join(f.dir, "pki", "h1")
	files := state.TLSFiles{CA: filepath.Join(pki, "ca.pem"), Cert: filepath.Join(pki, "client.pem"), Key: filepath.Join(pki, "client.key")}
	if f.tls, err = files.Config(); err != nil {
		f.close()
		return nil, err
	}
	dial := nl.DialIn(f.hostNS(1))
	f.store, err = state.Connect(ctx, eps, 10*time.Second, b.log, state.WithTLS(files),
		state.WithDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dial(ctx, "tcp", addr) }))
	if err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

func (f *fleetEnv) close() {
	if f.store != nil {
		_ = f.store.Close()
	}
	if err := f.script("down"); err != nil {
		f.b.log.WithError(err).Warn("fleet down")
	}
	for _, ns := range f.nss {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

// endpointNS makes a namespace for containers of host i.
func (f *fleetEnv) endpointNS(name string) (string, error) {
	ns := f.b.prefix + name
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns add %s: %v: %s", ns, err, out)
	}
	f.nss = append(f.nss, ns)
	return ns, exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
}

// pinger sends ICMP echoes from inside a namespace through one raw socket: a
// probe every few milliseconds costs no fork, so the time it reports is the
// network's, not the prober's.
type pinger struct {
	conn net.PacketConn
	seq  int
}

func newPinger(ns string) (*pinger, error) {
	c, err := nl.ListenPacketIn("/var/run/netns/"+ns, "ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, err
	}
	return &pinger{conn: c}, nil
}

func (p *pinger) close() { _ = p.conn.Close() }

// echo reports whether ip answers one echo within wait.
func (p *pinger) echo(ip string, wait time.Duration) bool {
	pc := p.conn
	p.seq++
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: p.seq, Data: []byte("netplugin")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return false
	}
	dst := &net.IPAddr{IP: net.ParseIP(ip)}
	if _, err := pc.WriteTo(b, dst); err != nil {
		time.Sleep(wait) // no route yet: the endpoint is not plugged in
		return false
	}
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1500)
	for {
		_ = pc.SetReadDeadline(deadline)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return false
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply || from.String() != ip {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == p.seq {
			return true
		}
	}
}

// fleet measures, on fleets of 3 and 6 hosts, how long a new network with one
// endpoint per host takes from its etcd write to every host reporting it up and
// a ping crossing the fleet, and what an idle fleet costs etcd.
func (b *bench) fleet(ctx context.Context) ([]Result, error) {
	var out []Result
	sizes := []int{3, 6}
	if v := os.Getenv("NP_BENCH_FLEET"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("NP_BENCH_FLEET=%q: want sizes like 3,6", v)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		rs, err := b.fleetOf(ctx, n)
		out = append(out, rs...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func (b *bench) fleetOf(ctx context.Context, n int) ([]Result, error) {
	f, err := b.startFleet(ctx, n)
	if err != nil {
		return nil, err
	}
	defer f.close()
	var out []Result
	conv, err := f.converge(ctx, 50)
	out = append(out, conv...)
	if err != nil {
		return out, err
	}
	if n == 6 {
		idle, err := f.idle(ctx, 50)
		out = append(out, idle...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// converge writes reps networks one after another, each with one endpoint per
// host attached to a namespace of that host, and times every write to the
// moment all hosts report the endpoints up (status keys, watched) and a ping
// from h1's endpoint reaches the last host's.
func (f *fleetEnv) converge(ctx context.Context, reps int) ([]Result, error) {
	tenant := f.b.prefix + "cv"
	if err := f.store.CreateTenant(ctx, tenant); err != nil {
		return nil, err
	}
	var nss []string
	for i := 1; i <= f.n; i++ {
		ns, err := f.endpointNS(fmt.Sprintf("cv%d-%d", f.n, i))
		if err != nil {
			return nil, err
		}
		nss = append(nss, ns)
	}
	ping, err := newPinger(nss[0])
	if err != nil {
		return nil, err
	}
	defer ping.close()
	var writeTimes, upTimes, pingTimes []time.Duration
	for r := 0; r < reps; r++ {
		name := fmt.Sprintf("c%d", r)
		subnet := fmt.Sprintf("10.120.%d", r)
		keys := map[string]bool{}
		for i := 1; i <= f.n; i++ {
			keys[state.StatusKey(tenant, fmt.Sprintf("%s-%d", name, i), fmt.Sprintf("h%d", i))] = true
		}
		head, err := f.store.Client().Get(ctx, state.StatusPrefix, clientv3.WithCountOnly())
		if err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		wch := f.store.Client().Watch(wctx, state.StatusPrefix, clientv3.WithPrefix(), clientv3.WithRev(head.Header.Revision+1))
		start := time.Now()
		if _, err := f.store.CreateNetwork(ctx, core.Network{Tenant: tenant, Name: name, Driver: "linuxbridge", Encap: core.EncapVXLAN,
			Subnet: subnet + ".0/24"}); err != nil {
			cancel()
			return nil, err
		}
		// Each host's endpoint is written at once, as each host's users
		// (or dockerd) would.
		hostIdx := make([]int, f.n)
		for i := range hostIdx {
			hostIdx[i] = i + 1
		}
		if err := forEach(hostIdx, f.n, func(i int) error {
			_, err := f.store.CreateEndpoint(ctx, core.Endpoint{Tenant: tenant, Network: name, Name: fmt.Sprintf("%s-%d", name, i),
				IP: fmt.Sprintf("%s.%d", subnet, i), Host: fmt.Sprintf("h%d", i), NetNS: nss[i-1]}, 0)
			return err
		}); err != nil {
			cancel()
			return nil, err
		}
		writeTimes = append(writeTimes, time.Since(start))
		up := 0
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type == mvccpb.PUT && keys[string(ev.Kv.Key)] && strings.Contains(string(ev.Kv.Value), `"state":"up"`) {
					delete(keys, string(ev.Kv.Key))
					up++
				}
			}
			if len(keys) == 0 {
				break
			}
		}
		cancel()
		if len(keys) != 0 {
			return nil, fmt.Errorf("converge %d hosts, rep %d: %d endpoints not up within 60 s", f.n, r, len(keys))
		}
		upTimes = append(upTimes, time.Since(start))
		last := fmt.Sprintf("%s.%d", subnet, f.n)
		for !ping.echo(last, 5*time.Millisecond) {
			if time.Since(start) > 60*time.Second {
				return nil, fmt.Errorf("converge %d hosts, rep %d: %s never answered", f.n, r, last)
			}
		}
		pingTimes = append(pingTimes, time.Since(start))
		// Take it down again and wait until every host removed it, so that
		// the next repetition meets a quiet fleet.
		for i := 1; i <= f.n; i++ {
			if err := f.store.DeleteEndpoint(ctx, tenant, fmt.Sprintf("%s-%d", name, i)); err != nil {
				return nil, err
			}
		}
		if err := f.store.DeleteNetwork(ctx, tenant, name); err != nil {
			return nil, err
		}
		for deadline := time.Now().Add(30 * time.Second); ; {
			left, err := f.store.Client().Get(ctx, state.StatusPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				return nil, err
			}
			if left.Count == 0 {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("converge %d hosts, rep %d: status of removed endpoints still there after 30 s", f.n, r)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := f.store.DeleteTenant(ctx, tenant); err != nil {
		return nil, err
	}
	q := func(ds []time.Duration, p float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	p99 := q(pingTimes, 0.99)
	name := fmt.Sprintf("converge_%d", f.n)
	res := []Result{
		{Name: name + "_p50", Value: q(pingTimes, 0.50), Unit: "ms",
			Note: fmt.Sprintf("write of 1 linuxbridge VXLAN network, then 1 endpoint on each of %d hosts at once (TLS etcd cluster), until all report up and a ping crosses the fleet; %d repetitions; writes done p50 %.1f ms, all up (status) p50 %.1f ms", f.n, reps, q(writeTimes, 0.5), q(upTimes, 0.5))},
		{Name: name + "_p99", Value: p99, Unit: "ms",
			Note: fmt.Sprintf("same; writes done p99 %.1f ms, all up (status) p99 %.1f ms; slowest 5 (ms): %v", q(writeTimes, 0.99), q(upTimes, 0.99), slowest(pingTimes, 5))},
	}
	if f.n == 6 {
		res[1].Target, res[1].Pass = "≤ 250 ms", boolp(p99 <= 250)
	}
	return res, nil
}

func slowest(ds []time.Duration, n int) []int64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	var out []int64
	for _, d := range s[max(0, len(s)-n):] {
		out = append(out, d.Milliseconds())
	}
	return out
}

// idle measures what an idle fleet asks of etcd: requests per second over 30 s
// summed over every member, from etcd's own metrics, first with no endpoint and
// then with per endpoints on every host. The second must not exceed the first
// by more than noise: an idle agent only keeps its lease alive.
func (f *fleetEnv) idle(ctx context.Context, per int) ([]Result, error) {
	const window = 30 * time.Second
	time.Sleep(5 * time.Second) // let the fleet settle after converge
	empty, emptyBy, err := f.etcdRate(ctx, window)
	if err != nil {
		return nil, err
	}
	tenant := f.b.prefix + "idle"
	doc := state.Document{Tenants: []state.TenantDocument{{Name: tenant}}}
	const nets = 5
	var nss []string
	for i := 1; i <= f.n; i++ {
		for j := 0; j < per/nets; j++ {
			ns, err := f.endpointNS(fmt.Sprintf("id%d-%d", i, j))
			if err != nil {
				return nil, err
			}
			nss = append(nss, ns)
		}
	}
	for k := 0; k < nets; k++ {
		nd := state.NetworkDocument{Name: fmt.Sprintf("n%d", k), Driver: "linuxbridge", TagType: core.EncapVXLAN,
			Subnet: fmt.Sprintf("10.121.%d.0/24", k)}
		for i := 1; i <= f.n; i++ {
			for j := 0; j < per/nets; j++ {
				nd.Endpoints = append(nd.Endpoints, state.EndpointDocument{Name: fmt.Sprintf("e%d-%d-%d", k, i, j),
					Host: fmt.Sprintf("h%d", i), NetNS: nss[(i-1)*(per/nets)+j]})
			}
		}
		doc.Tenants[0].Networks = append(doc.Tenants[0].Networks, nd)
	}
	if _, err := f.store.Apply(ctx, doc, ""); err != nil {
		return nil, fmt.Errorf("idle: apply %d endpoints: %w", f.n*per, err)
	}
	want := f.n * per
	for deadline := time.Now().Add(120 * time.Second); ; {
		r, err := f.store.Client().Get(ctx, state.StatusPrefix, clientv3.WithPrefix())
		if err != nil {
			return nil, err
		}
		up := 0
		for _, kv := range r.Kvs {
			if strings.Contains(string(kv.Value), `"state":"up"`) {
				up++
			}
		}
		if up == want {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("idle: %d of %d endpoints up after 120 s", up, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(5 * time.Second)
	full, fullBy, err := f.etcdRate(ctx, window)
	if err != nil {
		return nil, err
	}
	if _, err := f.store.Apply(ctx, state.Document{}, ""); err != nil {
		return nil, err
	}
	return []Result{{Name: "idle_etcd_rps", Value: full, Unit: "req/s",
		Target: fmt.Sprintf("keepalives only, not growing with endpoints (%.2f req/s with none)", empty),
		Pass:   boolp(full <= empty*1.2+0.5),
		Note: fmt.Sprintf("%d agents x %d endpoints, idle %v, summed over the %d etcd members (gRPC messages received, by method): %s; with no endpoint: %s",
			f.n, per, window, f.n, fullBy, emptyBy)}}, nil
}

// etcdRate samples every member's grpc_server_msg_received_total (every request
// and every keepalive message on a stream counts once) over window and returns
// the cluster's rate, and the rate by method as text.
func (f *fleetEnv) etcdRate(ctx context.Context, window time.Duration) (float64, string, error) {
	before, err := f.etcdCounters(ctx)
	if err != nil {
		return 0, "", err
	}
	time.Sleep(window)
	after, err := f.etcdCounters(ctx)
	if err != nil {
		return 0, "", err
	}
	total := 0.0
	var parts []string
	for _, m := range slices.Sorted(mapKeys(after)) {
		d := (after[m] - before[m]) / window.Seconds()
		if d <= 0 {
			continue
		}
		total += d
		parts = append(parts, fmt.Sprintf("%s %.2f", m, d))
	}
	return total, strings.Join(parts, ", "), nil
}

func mapKeys(m map[string]float64) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// etcdCounters reads, from every member's /metrics (TLS, from inside h1's
// namespace), the gRPC messages received so far, by method.
func (f *fleetEnv) etcdCounters(ctx context.Context) (map[string]float64, error) {
	dial := nl.DialIn(f.hostNS(1))
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) },
		TLSClientConfig: f.tls,
	}}
	out := map[string]float64{}
	for i := 1; i <= f.n; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("https://172.30.0.%d:2379/metrics", i), nil)
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("metrics of h%d's etcd: %w", i, err)
		}
		err = parseReceived(resp.Body, out)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func parseReceived(r io.Reader, into map[string]float64) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	found := false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "grpc_server_msg_received_total{") {
			continue
		}
		i := strings.Index(line, `grpc_method="`)
		sp := strings.LastIndexByte(line, ' ')
		if i < 0 || sp < 0 {
			continue
		}
		method := line[i+len(`grpc_method="`):]
		method = method[:strings.IndexByte(method, '"')]
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		into[method] += v
		found = true
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if !found {
		return errors.New("etcd metrics have no grpc_server_msg_received_total")
	}
	return nil
}
