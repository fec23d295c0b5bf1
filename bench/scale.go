package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/recdriver"
	"github.com/netplugin/netplugin/netplugin/agent"
	"github.com/netplugin/netplugin/state"
)

// scale runs scale_agents_<N> for each size: N real agents (the agent
// package, each with its own etcd client, lease and watches, a recording
// driver that programs nothing) in this process against Debian's etcd in its
// own, 50 endpoints each, on N/5 networks of 5 to 20 hosts.
func (b *bench) scale(ctx context.Context) ([]Result, error) {
	var res []Result
	for _, n := range b.scaleSizes {
		rs, err := b.scaleOnce(ctx, n)
		res = append(res, rs...)
		if err != nil {
			return res, fmt.Errorf("%d agents: %w", n, err)
		}
	}
	rs, err := b.agentHeap(ctx)
	return append(res, rs...), err
}

const epsPerHost = 50

// topology is which hosts serve which network.
type topology struct {
	hosts []string
	nets  []core.Network
	// netHosts[i] are the host indexes of network i; hostNets the reverse.
	netHosts [][]int
	hostNets [][]int
}

func makeTopology(prefix string, n int, rnd *rand.Rand) topology {
	t := topology{hostNets: make([][]int, n)}
	for i := 0; i < n; i++ {
		t.hosts = append(t.hosts, fmt.Sprintf("%sh%04d", prefix, i))
	}
	m := max(1, n/5)
	for i := 0; i < m; i++ {
		t.nets = append(t.nets, core.Network{Tenant: core.DefaultTenant, Name: fmt.Sprintf("%sn%03d", prefix, i), Driver: recdriver.Name,
			Encap: core.EncapVXLAN, Subnet: fmt.Sprintf("10.%d.%d.0/22", 128+i/64, (i%64)*4)})
		k := min(n, 5+rnd.IntN(16))
		var hs []int
		for _, h := range rnd.Perm(n)[:k] {
			hs = append(hs, h)
			t.hostNets[h] = append(t.hostNets[h], i)
		}
		t.netHosts = append(t.netHosts, hs)
	}
	// A host no network drew joins the smallest network.
	for h := range t.hostNets {
		if len(t.hostNets[h]) > 0 {
			continue
		}
		small := 0
		for i := range t.netHosts {
			if len(t.netHosts[i]) < len(t.netHosts[small]) {
				small = i
			}
		}
		t.netHosts[small] = append(t.netHosts[small], h)
		t.hostNets[h] = append(t.hostNets[h], small)
	}
	return t
}

// statusWatch follows every status key and tells waiters when an endpoint
// is up on its host.
type statusWatch struct {
	mu      sync.Mutex
	up      map[string]bool // status key -> up
	waiters map[string]chan struct{}
	count   int
}

func watchStatus(ctx context.Context, cli *clientv3.Client) (*statusWatch, error) {
	w := &statusWatch{up: map[string]bool{}, waiters: map[string]chan struct{}{}}
	r, err := cli.Get(ctx, state.StatusPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	for _, kv := range r.Kvs {
		w.apply(string(kv.Key), kv.Value, false)
	}
	go func() {
		for resp := range cli.Watch(ctx, state.StatusPrefix, clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1)) {
			for _, ev := range resp.Events {
				w.apply(string(ev.Kv.Key), ev.Kv.Value, ev.Type == mvccpb.DELETE)
			}
		}
	}()
	return w, nil
}

func (w *statusWatch) apply(key string, val []byte, del bool) {
	var st core.EndpointStatus
	up := !del && json.Unmarshal(val, &st) == nil && st.State == core.StateUp
	w.mu.Lock()
	defer w.mu.Unlock()
	if up != w.up[key] {
		if up {
			w.count++
		} else {
			w.count--
		}
	}
	if up {
		w.up[key] = true
		if ch := w.waiters[key]; ch != nil {
			close(ch)
			delete(w.waiters, key)
		}
	} else {
		delete(w.up, key)
	}
}

func (w *statusWatch) ups() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

// waitUp returns a channel closed when endpoint epKey is up on host.
func (w *statusWatch) waitUp(epKey, host string) <-chan struct{} {
	key := state.StatusPrefix + epKey + "/" + host
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := make(chan struct{})
	if w.up[key] {
		close(ch)
		return ch
	}
	w.waiters[key] = ch
	return ch
}

func heapMiB() float64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.ErrorLevel)
	return logrus.NewEntry(l)
}

// etcdWithStore starts an etcd of its own (name), a namespace ns the
// endpoints name, and a store client on that etcd; done undoes all three.
func (b *bench) etcdWithStore(ctx context.Context, name, ns string) (*etcdProc, *state.Store, func(), error) {
	e, err := startEtcdProc(ctx, name)
	if err != nil {
		return nil, nil, nil, err
	}
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		e.stop()
		return nil, nil, nil, fmt.Errorf("ip netns add %s: %v: %s", ns, err, out)
	}
	s, err := state.Connect(ctx, []string{e.url}, 10*time.Second, quietLog())
	if err != nil {
		_ = exec.Command("ip", "netns", "del", ns).Run()
		e.stop()
		return nil, nil, nil, err
	}
	return e, s, func() {
		s.Close()
		_ = exec.Command("ip", "netns", "del", ns).Run()
		e.stop()
	}, nil
}

func (b *bench) scaleOnce(ctx context.Context, n int) ([]Result, error) {
	name := fmt.Sprintf("scale_agents_%d", n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ns := fmt.Sprintf("%ss%d", b.prefix, n)
	e, s, undo, err := b.etcdWithStore(ctx, b.prefix+fmt.Sprint(n), ns)
	if err != nil {
		return nil, err
	}
	defer undo()
	log := quietLog()
	rnd := rand.New(rand.NewPCG(uint64(n), 42))
	topo := makeTopology(b.prefix, n, rnd)
	for _, nw := range topo.nets {
		if _, err := s.CreateNetwork(ctx, nw); err != nil {
			return nil, err
		}
	}
	type job struct {
		host, net int
		name      string
	}
	var jobs []job
	for h := range topo.hosts {
		for i := 0; i < epsPerHost; i++ {
			jobs = append(jobs, job{h, topo.hostNets[h][i%len(topo.hostNets[h])], fmt.Sprintf("e%04d-%02d", h, i)})
		}
	}
	start := time.Now()
	if err := parallelCreate(ctx, e.url, log, 16, len(jobs), func(c *state.Store, i int) error {
		j := jobs[i]
		_, err := c.CreateEndpoint(ctx, core.Endpoint{Network: topo.nets[j.net].Name, Name: j.name, Host: topo.hosts[j.host], NetNS: ns}, 0)
		return err
	}); err != nil {
		return nil, err
	}
	setup := time.Since(start)
	var res []Result
	res = append(res, Result{Name: name + "_setup", Value: float64(len(jobs)) / setup.Seconds(), Unit: "creates/s",
		Note: fmt.Sprintf("%d endpoints on %d networks (%d to %d hosts each) by 16 clients in %.0fs", len(jobs), len(topo.nets), minHosts(topo), maxHosts(topo), setup.Seconds())})

	sw, err := watchStatus(ctx, s.Client())
	if err != nil {
		return res, err
	}
	heap0 := heapMiB()
	agents := make([]*agent.Agent, n)
	var wg sync.WaitGroup
	start = time.Now()
	for i := range topo.hosts {
		c, err := state.Connect(ctx, []string{e.url}, 30*time.Second, log)
		if err != nil {
			return res, err
		}
		defer c.Close()
		agents[i] = agent.New(agent.Config{Host: topo.hosts[i], VTEP: fmt.Sprintf("198.18.%d.%d", i/250, i%250+1), Store: c,
			Drivers: map[string]core.Driver{recdriver.Name: recdriver.New()}, Workers: 2, LeaseTTL: 10, Log: log})
		wg.Add(1)
		go func() { defer wg.Done(); _ = agents[i].Run(ctx) }()
		if i%50 == 49 {
			time.Sleep(100 * time.Millisecond) // hosts boot over time, not in one instant
		}
	}
	defer func() { cancel(); wg.Wait() }()
	deadline := time.Now().Add(10 * time.Minute)
	for sw.ups() < len(jobs) {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("%d of %d endpoints up after 10 minutes", sw.ups(), len(jobs))
		}
		time.Sleep(100 * time.Millisecond)
	}
	coldStart := time.Since(start)
	events := func() int64 {
		var sum int64
		for _, a := range agents {
			sum += a.WatchEvents()
		}
		return sum
	}
	quiesce := func() int64 {
		last, since := events(), time.Now()
		for time.Since(since) < time.Second {
			time.Sleep(100 * time.Millisecond)
			if now := events(); now != last {
				last, since = now, time.Now()
			}
		}
		return last
	}
	quiesce()
	heap1 := heapMiB()
	res = append(res, Result{Name: name + "_cold_start", Value: coldStart.Seconds(), Unit: "s",
		Note: fmt.Sprintf("%d agents started 50 at a time until all %d endpoints reported up", n, len(jobs))})

	// Idle: what etcd serves while nothing changes.
	c0, err := e.counters()
	if err != nil {
		return res, err
	}
	const idle = 20 * time.Second
	time.Sleep(idle)
	c1, err := e.counters()
	if err != nil {
		return res, err
	}
	unary := (c1.unary - c0.unary) / idle.Seconds()
	res = append(res, Result{Name: name + "_idle_requests", Value: unary, Unit: "requests/s", Target: "keepalives only", Pass: boolp(unary < 1),
		Note: fmt.Sprintf("besides %.0f lease keepalives/s and %.1f watch stream messages/s, over %s with %d agents resyncing every 10s",
			(c1.keepalives-c0.keepalives)/idle.Seconds(), (c1.watchMsgs-c0.watchMsgs)/idle.Seconds(), idle, n)})

	// Watch events per endpoint write, against what a watch of the whole
	// config (every agent, before) would receive.
	full := newFullMirror(ctx, e.url, log, n)
	defer full.close()
	if err := full.ready(ctx); err != nil {
		return res, err
	}
	const writes = 40
	var perWrite, perBound, fullPer []float64
	for i := 0; i < writes; i++ {
		h := rnd.IntN(n)
		nw := topo.hostNets[h][rnd.IntN(len(topo.hostNets[h]))]
		before, fullBefore := quiesce(), full.events.Load()
		epName := fmt.Sprintf("w%04d", i)
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: topo.nets[nw].Name, Name: epName, Host: topo.hosts[h], NetNS: ns}, 0); err != nil {
			return res, err
		}
		<-sw.waitUp(core.DefaultTenant+"/"+epName, topo.hosts[h])
		got := float64(quiesce() - before)
		perWrite = append(perWrite, got)
		perBound = append(perBound, got/float64(1+len(topo.netHosts[nw])))
		fullPer = append(fullPer, float64(full.events.Load()-fullBefore))
	}
	full.close()
	worst := maxOf(perBound)
	res = append(res, Result{Name: name + "_events_per_write", Value: mean(perWrite), Unit: "events", Target: "<= 1 + hosts of the network",
		Pass: boolp(worst <= 1.0001), Note: fmt.Sprintf("mean over %d endpoint creates; at most %.2f x (1 + hosts of its network); a full mirror of config/ on each agent (before) got %.0f per write",
			writes, worst, mean(fullPer))})

	// Write -> up under 10 writes/s of background churn.
	churnCtx, stopChurn := context.WithCancel(ctx)
	var churned atomic.Int64
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var detached []job
		for {
			select {
			case <-churnCtx.Done():
				return
			case <-tick.C:
			}
			if len(detached) > 0 && rnd.IntN(2) == 0 {
				j := detached[0]
				detached = detached[1:]
				_, _ = s.Attach(churnCtx, core.DefaultTenant, j.name, state.Attachment{NetNS: ns})
			} else {
				j := jobs[rnd.IntN(len(jobs))]
				if _, err := s.Detach(churnCtx, core.DefaultTenant, j.name, ""); err == nil {
					detached = append(detached, j)
				}
			}
			churned.Add(1)
		}
	}()
	samples := 200
	if n < 1000 {
		samples = 100
	}
	var lat []float64
	for i := 0; i < samples; i++ {
		h := rnd.IntN(n)
		nw := topo.hostNets[h][rnd.IntN(len(topo.hostNets[h]))]
		epName := fmt.Sprintf("l%04d", i)
		t0 := time.Now()
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: topo.nets[nw].Name, Name: epName, Host: topo.hosts[h], NetNS: ns}, 0); err != nil {
			stopChurn()
			return res, err
		}
		select {
		case <-sw.waitUp(core.DefaultTenant+"/"+epName, topo.hosts[h]):
			lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
		case <-time.After(30 * time.Second):
			stopChurn()
			return res, fmt.Errorf("endpoint %s not up after 30s", epName)
		}
		time.Sleep(time.Duration(rnd.IntN(50)) * time.Millisecond)
	}
	churnTook := churned.Load()
	stopChurn()
	sort.Float64s(lat)
	p50, p99 := pct(lat, 50), pct(lat, 99)
	load, _ := os.ReadFile("/proc/loadavg")
	res = append(res, Result{Name: name + "_write_up_p50", Value: p50, Unit: "ms",
		Note: fmt.Sprintf("%d single endpoint creates until their host reports them up, under %d background attach/detach writes (10/s)", samples, churnTook)})
	res = append(res, Result{Name: name + "_write_up_p99", Value: p99, Unit: "ms", Target: "<= 1000", Pass: boolp(p99 <= 1000),
		Note: "machine load average " + strings.Fields(string(load))[0] + " (two cores, shared)"})

	locals, remotes := len(jobs)+writes+samples, 0
	for i, hs := range topo.netHosts {
		on := 0
		for _, j := range jobs {
			if j.net == i {
				on++
			}
		}
		remotes += on * (len(hs) - 1)
	}
	perAgent := (heap1 - heap0) * 1024 / float64(n)
	res = append(res, Result{Name: name + "_agent_heap", Value: perAgent, Unit: "KiB/agent",
		Note: fmt.Sprintf("%.0f MiB of heap for %d agents with their clients, leases and watches; they know %d local and %d remote endpoints: %.2f KiB per endpoint known, fixed costs included",
			heap1-heap0, n, locals, remotes, (heap1-heap0)*1024/float64(locals+remotes))})
	rss, peak := e.rssMiB()
	cEnd, err := e.counters()
	if err != nil {
		return res, err
	}
	res = append(res, Result{Name: name + "_etcd_rss", Value: rss, Unit: "MiB", Note: fmt.Sprintf("peak %.0f MiB", peak)})
	res = append(res, Result{Name: name + "_etcd_sent", Value: cEnd.sentBytes / (1 << 20), Unit: "MiB",
		Note: fmt.Sprintf("what etcd sent its clients over the whole run (setup, %d agents' start, the measurements)", n)})
	return res, nil
}

func minHosts(t topology) int {
	m := len(t.hosts)
	for _, hs := range t.netHosts {
		m = min(m, len(hs))
	}
	return m
}

func maxHosts(t topology) int {
	m := 0
	for _, hs := range t.netHosts {
		m = max(m, len(hs))
	}
	return m
}

// parallelCreate runs count calls of fn over workers clients.
func parallelCreate(ctx context.Context, url string, log *logrus.Entry, workers, count int, fn func(*state.Store, int) error) error {
	var next atomic.Int64
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		c, err := state.Connect(ctx, []string{url}, 10*time.Second, log)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for {
				i := int(next.Add(1) - 1)
				if i >= count {
					return
				}
				if err := fn(c, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// fullMirror is n watches of the whole config/, what every agent had before
// its mirror was scoped, on a few clients: the baseline of events per write.
type fullMirror struct {
	clients []*clientv3.Client
	cancel  context.CancelFunc
	events  atomic.Int64
	started sync.WaitGroup
}

func newFullMirror(ctx context.Context, url string, log *logrus.Entry, n int) *fullMirror {
	ctx, cancel := context.WithCancel(ctx)
	f := &fullMirror{cancel: cancel}
	for i := 0; i < max(1, n/50); i++ {
		s, err := state.Connect(ctx, []string{url}, 10*time.Second, log)
		if err != nil {
			continue
		}
		f.clients = append(f.clients, s.Client())
	}
	for i := 0; i < n && len(f.clients) > 0; i++ {
		cli := f.clients[i%len(f.clients)]
		f.started.Add(1)
		go func() {
			wch := cli.Watch(ctx, state.ConfigPrefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
			f.started.Done()
			for resp := range wch {
				f.events.Add(int64(len(resp.Events)))
			}
		}()
	}
	return f
}

func (f *fullMirror) ready(ctx context.Context) error {
	f.started.Wait()
	time.Sleep(time.Second) // the watches' creation round trips
	return ctx.Err()
}

func (f *fullMirror) close() {
	f.cancel()
	for _, c := range f.clients {
		_ = c.Close()
	}
	f.clients = nil
}

func mean(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(max(1, len(v)))
}

func maxOf(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

// pct is the p-th percentile of sorted v.
func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	i := int(float64(len(v)-1) * p / 100)
	return v[i]
}

// agentHeap measures one agent's heap per endpoint it must know: first 2,000
// endpoints of its own, then 10,000 endpoints of 20 other hosts on its
// networks (their hosts' publications written as their agents would).
func (b *bench) agentHeap(ctx context.Context) ([]Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ns := b.prefix + "heap"
	e, s, undo, err := b.etcdWithStore(ctx, b.prefix+"heap", ns)
	if err != nil {
		return nil, err
	}
	defer undo()
	log := quietLog()
	const local, nets, others, remote = 2000, 4, 20, 10000
	host := b.prefix + "heap"
	for i := 0; i < nets; i++ {
		if _, err := s.CreateNetwork(ctx, core.Network{Name: fmt.Sprintf("n%d", i), Driver: recdriver.Name, Encap: core.EncapVXLAN,
			Subnet: fmt.Sprintf("10.140.%d.0/18", i*64)}); err != nil {
			return nil, err
		}
	}
	sw, err := watchStatus(ctx, s.Client())
	if err != nil {
		return nil, err
	}
	c, err := state.Connect(ctx, []string{e.url}, 10*time.Second, log)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	drv := recdriver.New()
	a := agent.New(agent.Config{Host: host, VTEP: "198.18.0.1", Store: c, Drivers: map[string]core.Driver{recdriver.Name: drv}, Log: log})
	// The endpoint that makes the agent serve each network, before the measure.
	for i := 0; i < nets; i++ {
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: fmt.Sprintf("n%d", i), Name: fmt.Sprintf("seed%d", i), Host: host, NetNS: ns}, 0); err != nil {
			return nil, err
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitN := func(what string, cond func() bool) error {
		deadline := time.Now().Add(5 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				return fmt.Errorf("agent heap: %s not reached", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(time.Second)
		return nil
	}
	if err := waitN("seeds up", func() bool { return sw.ups() == nets }); err != nil {
		return nil, err
	}
	h0 := heapMiB()
	if err := parallelCreate(ctx, e.url, log, 8, local, func(c *state.Store, i int) error {
		_, err := c.CreateEndpoint(ctx, core.Endpoint{Network: fmt.Sprintf("n%d", i%nets), Name: fmt.Sprintf("l%d", i), Host: host, NetNS: ns}, 0)
		return err
	}); err != nil {
		return nil, err
	}
	if err := waitN("local endpoints up", func() bool { return sw.ups() == nets+local }); err != nil {
		return nil, err
	}
	h1 := heapMiB()
	// The other hosts serve the networks (as their agents publish it, under a lease) ...
	for o := 0; o < others; o++ {
		sess, err := s.Register(ctx, core.HostInfo{Name: fmt.Sprintf("o%02d", o), VTEP: fmt.Sprintf("198.18.1.%d", o+1), Drivers: []string{recdriver.Name}}, 60, 0)
		if err != nil {
			return nil, err
		}
		defer sess.Revoke(context.Background())
		var put []string
		for i := 0; i < nets; i++ {
			put = append(put, fmt.Sprintf("default/n%d", i))
		}
		if err := sess.PublishNetworks(ctx, core.HostInfo{Name: fmt.Sprintf("o%02d", o), VTEP: fmt.Sprintf("198.18.1.%d", o+1), Drivers: []string{recdriver.Name}}, put, nil); err != nil {
			return nil, err
		}
	}
	// ... and have endpoints there.
	if err := parallelCreate(ctx, e.url, log, 8, remote, func(c *state.Store, i int) error {
		_, err := c.CreateEndpoint(ctx, core.Endpoint{Network: fmt.Sprintf("n%d", i%nets), Name: fmt.Sprintf("r%d", i), Host: fmt.Sprintf("o%02d", i%others), NetNS: ns}, 0)
		return err
	}); err != nil {
		return nil, err
	}
	if err := waitN("remote endpoints known", func() bool { return drv.RemoteCount() == remote }); err != nil {
		return nil, err
	}
	h2 := heapMiB()
	perLocal := (h1 - h0) * 1024 / local
	perRemote := (h2 - h1) * 1024 / remote
	return []Result{
		{Name: "agent_heap_local_endpoint", Value: perLocal, Unit: "KiB", Target: "<= 10", Pass: boolp(perLocal <= 10),
			Note: fmt.Sprintf("one agent, %d endpoints of its own on %d networks: %.1f MiB more heap (its mirror, its driver's records, its status cache)", local, nets, h1-h0)},
		{Name: "agent_heap_remote_endpoint", Value: perRemote, Unit: "KiB", Target: "<= 2", Pass: boolp(perRemote <= 2),
			Note: fmt.Sprintf("then %d endpoints of %d other hosts on those networks: %.1f MiB more (their index copies, its remotes)", remote, others, h2-h1)},
	}, nil
}
