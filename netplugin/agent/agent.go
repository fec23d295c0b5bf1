// Package agent is the per-host loop of netplugin: it mirrors the part of the
// desired state its host needs (state.HostView: its own endpoints, and for
// the networks they are on, those networks and what their other hosts
// publish), asks each driver what the host has, reconciles the two with the
// pure core.Reconcile, applies the plan and writes what it observed back
// under the host's lease, with the networks it serves for the other hosts.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/internal/backoff"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/routes"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// ContainerResolver finds the network namespace of a running container.
type ContainerResolver interface {
	// NetNSPath returns the namespace path of a running container, or an error
	// saying it does not exist or is not running.
	NetNSPath(ctx context.Context, idOrName string) (string, error)
}

// Store is what the agent needs of etcd: the store's identity, its host's
// session, and its host's scoped view. *state.Store implements it.
type Store interface {
	ClusterID(ctx context.Context) (string, error)
	ReadClusterID(ctx context.Context) (string, error)
	Register(ctx context.Context, info core.HostInfo, ttl int, prev int64) (*state.HostSession, error)
	WatchHost(host string, poke func()) *state.HostView
}

// Config wires an agent.
type Config struct {
	Host       string
	VTEP       string // this host's underlay address, published for peers
	RouteNetNS string // namespace to install routes to other hosts' blocks in; "": the agent's
	Store      Store
	Drivers    map[string]core.Driver
	Containers ContainerResolver // nil: endpoints attached to containers report an error
	Resync     time.Duration     // full resync period; events only make it sooner
	Workers    int               // endpoints programmed in parallel
	LeaseTTL   int               // seconds
	// LeaseFile records this host's lease for the next agent; ClusterFile the
	// store this host is programmed from (see identity.go). "": not kept.
	LeaseFile, ClusterFile string
	AdoptCluster           bool // take the store's cluster ID even if this host was programmed from another
	Log                    *logrus.Entry
	Metrics                *Metrics

	// HostGrace is how long a host whose lease went keeps its tunnels, routes
	// and forwarding entries here (0: dropped at once).
	HostGrace time.Duration
}

// Agent reconciles one host.
type Agent struct {
	cfg     Config
	log     *logrus.Entry
	trigger chan struct{}
	view    *state.HostView
	routes  *routes.Syncer
	// routed: routes were installed, so an empty desired set must be applied too.
	routed bool
	// hostMem and graceTimer keep hosts for HostGrace after their lease went
	// (see overlay.go); used by SyncOnce only.
	hostMem    hostMemory
	graceTimer *time.Timer

	// written is the status last written per endpoint key, so unchanged status
	// costs no etcd write; published the networks this host last said it serves.
	written map[string]core.EndpointStatus
	// inherited are endpoints whose status a predecessor left under the
	// lease this agent took over and no pass has rewritten yet: they are
	// this agent's to delete when it no longer has them (an endpoint detached
	// or deleted while no agent ran, or between the takeover and the first
	// pass), or the key would say "up" for as long as the lease lives.
	inherited map[string]bool
	published map[string]bool
	info      core.HostInfo // as registered, published per served network
	// badSeen are the bad keys already logged, by key and error.
	badSeen map[string]string
	// resolved caches container (or "netns:"+path) -> namespace; revalidated
	// by stat on every use, forgotten when a pass does not use it.
	resolved     map[string]resolvedNS
	resolvedUsed map[string]bool
	// hostNS are the namespaces never to plug a container into: the agent's
	// own and the machine's (PID 1's), as device:inode.
	hostNS []string

	// runMu serialises syncs. syncMu keeps Exclusive callers (the Docker
	// plugin), which program links the agent must not see half-made, apart
	// from the part of a sync that programs the host: no etcd or Docker round
	// trip happens under it. minRev is the revision the mirror must have
	// reached before a sync programs anything (the last Exclusive write).
	runMu  sync.Mutex
	syncMu sync.Mutex
	minRev atomic.Int64
	// applied are the endpoints the last applied pass wanted or held; a pass
	// that wants fewer, or the first, first asks etcd itself for its cluster
	// ID (see confirmCluster).
	applied map[string]bool

	clusterID     string       // of the store this host is programmed from
	problem       atomic.Value // string: why the agent holds back, for /healthz
	etcdDownSince atomic.Int64 // unix nanos of the first failed etcd request of an outage; 0: up

	pol policyState // see policy.go; used by SyncOnce only

	lastGood atomic.Int64 // unix nanos of the last successful sync
	synced   atomic.Int64 // number of completed syncs, for tests
}

type resolvedNS struct{ path, id string }

// New returns an agent; Run starts it.
func New(cfg Config) *Agent {
	if cfg.Resync <= 0 {
		cfg.Resync = 10 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 10
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	a := &Agent{cfg: cfg, log: cfg.Log.WithField("host", cfg.Host), trigger: make(chan struct{}, 1),
		written: map[string]core.EndpointStatus{}, inherited: map[string]bool{}, published: map[string]bool{}, badSeen: map[string]string{},
		resolved: map[string]resolvedNS{}, pol: policyState{gen: map[string]int64{}, errs: map[string][]string{}}}
	for _, p := range []string{"/proc/self/ns/net", "/proc/1/ns/net"} {
		if id, err := nl.NetNSID(p); err == nil {
			a.hostNS = append(a.hostNS, id)
		}
	}
	a.view = cfg.Store.WatchHost(cfg.Host, a.Poke)
	return a
}

// Poke asks for a sync soon; bursts of pokes coalesce into one sync.
func (a *Agent) Poke() {
	select {
	case a.trigger <- struct{}{}:
	default: // a sync is already pending
	}
}

// Healthy reports whether a sync succeeded recently and nothing holds the
// agent back; Problem says what does.
func (a *Agent) Healthy() bool {
	last := a.lastGood.Load()
	return a.Problem() == "" && last != 0 && time.Since(time.Unix(0, last)) < 3*a.cfg.Resync
}

// Problem is why the agent cannot do its job right now, or "".
func (a *Agent) Problem() string {
	if p, _ := a.problem.Load().(string); p != "" {
		return p
	}
	if down := a.etcdDownSince.Load(); down != 0 {
		return "etcd unreachable since " + time.Unix(0, down).UTC().Format(time.RFC3339) + "; the dataplane is kept as it is"
	}
	return ""
}

func (a *Agent) setProblem(p string) { a.problem.Store(p) }

// etcdUp records whether the last etcd request worked, for /healthz and the
// netplugin_etcd_up metric.
func (a *Agent) etcdUp(up bool) {
	if up {
		a.etcdDownSince.Store(0)
		a.cfg.Metrics.etcdUp.Set(1)
		return
	}
	a.etcdDownSince.CompareAndSwap(0, time.Now().UnixNano())
	a.cfg.Metrics.etcdUp.Set(0)
}

// Syncs returns how many syncs completed.
func (a *Agent) Syncs() int64 { return a.synced.Load() }

// WatchEvents counts the watch events the agent's mirror received.
func (a *Agent) WatchEvents() int64 { return a.view.Events() }

// Run reconciles until ctx ends. It keeps retrying when etcd is unreachable.
// It returns an error only when this agent must not run: its host label is
// held by another agent.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.checkCluster(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	go a.view.Run(ctx)
	for first := true; ; first = false {
		sess, err := a.register(ctx, first)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		err = a.loop(ctx, sess)
		if ctx.Err() != nil {
			// The lease is left to the next agent of this host, which takes it
			// over (an upgrade or restart is invisible to peers), or to expire.
			sess.Orphan()
			return nil
		}
		a.etcdUp(false)
		a.log.WithError(err).Warn("host lease lost; registering again")
		// The status and the publications went with the lease.
		a.written, a.published = map[string]core.EndpointStatus{}, map[string]bool{}
		a.pol.written = ""
	}
}

func (a *Agent) loop(ctx context.Context, sess *state.HostSession) error {
	select {
	case <-a.view.Ready():
	case <-ctx.Done():
		return ctx.Err()
	}
	tick := time.NewTicker(a.cfg.Resync)
	defer tick.Stop()
	a.Poke()
	// A sync that keeps failing (etcd away, a driver refusing) waits, longer
	// each time, instead of running again at the next event.
	retry := backoff.Backoff{Min: 100 * time.Millisecond, Max: max(a.cfg.Resync, 100*time.Millisecond)}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errors.New("lease expired")
		case <-a.trigger:
		case <-tick.C:
		}
		start := time.Now()
		err := a.SyncOnce(ctx, sess)
		a.cfg.Metrics.observeSync(time.Since(start), err)
		a.synced.Add(1)
		if err == nil {
			retry.Reset()
			a.lastGood.Store(time.Now().UnixNano())
			continue
		}
		wait := retry.Next()
		a.log.WithError(err).WithField("retryIn", wait.Round(time.Millisecond)).Warn("sync incomplete; will retry")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errors.New("lease expired")
		case <-time.After(wait):
		}
	}
}

// Exclusive runs fn while no sync programs the host. fn returns the etcd
// revision of the desired state it wrote (0: none); Exclusive returns only
// once the agent's mirror has it, and no sync programs the host from a mirror
// older than that, so that the next sync sees the links fn made as desired
// rather than as stale ones to remove. The wait is outside the lock.
func (a *Agent) Exclusive(ctx context.Context, fn func(context.Context) (int64, error)) error {
	a.syncMu.Lock()
	rev, err := fn(ctx)
	if err == nil && rev > 0 {
		for cur := a.minRev.Load(); cur < rev && !a.minRev.CompareAndSwap(cur, rev); cur = a.minRev.Load() {
		}
	}
	a.syncMu.Unlock()
	if err != nil || rev == 0 {
		return err
	}
	return a.view.WaitRev(ctx, rev)
}

// SyncOnce observes, reconciles and applies once, then writes status.
func (a *Agent) SyncOnce(ctx context.Context, sess *state.HostSession) error {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	for {
		need := a.minRev.Load()
		if need > 0 {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := a.view.WaitRev(wctx, need)
			cancel()
			if err != nil {
				return err
			}
		}
		st := a.view.Snapshot()
		if err := a.mirrorIsOurs(st); err != nil {
			a.setProblem(err.Error())
			return err
		}
		p := a.desired(ctx, st)
		if err := a.confirmCluster(ctx, p); err != nil {
			a.setProblem(err.Error())
			return err
		}
		a.setProblem("")
		a.syncMu.Lock()
		if a.minRev.Load() != need {
			// A Docker call wrote while this pass read: read again.
			a.syncMu.Unlock()
			continue
		}
		errs := a.program(ctx, st, p)
		a.syncMu.Unlock()
		a.applied = p.keys()
		if err := a.publish(ctx, sess, st); err != nil {
			errs = append(errs, err)
		}
		err := a.writeStatus(ctx, sess, p.status, p.hold)
		if err == nil {
			err = a.writePolicyStatus(ctx, sess)
		}
		if err != nil {
			a.cfg.Metrics.etcdErrors.Inc()
			a.etcdUp(false)
			errs = append(errs, err)
		} else {
			a.etcdUp(true)
		}
		a.cfg.Metrics.setEndpoints(p.status)
		return errors.Join(errs...)
	}
}

// pass is what one sync wants of the host.
type pass struct {
	want   map[string]*core.Desired // by driver
	status map[string]core.EndpointStatus
	// hold are endpoints whose links must be kept although not ensured now.
	hold map[string]bool
}

// keys are the endpoints a pass wants or holds.
func (p pass) keys() map[string]bool {
	out := map[string]bool{}
	for _, d := range p.want {
		for _, e := range d.Endpoints {
			out[e.Key()] = true
		}
	}
	for k := range p.hold {
		out[k] = true
	}
	return out
}

// confirmCluster guards against taking an emptied store for the desired
// state: the mirror's ranges are watched apart, so the one holding this
// host's endpoints may show a wipe before the one holding the cluster ID
// does. A pass that would drop endpoints the last one had, and the first
// pass, read the cluster ID from etcd itself: one key, only then.
func (a *Agent) confirmCluster(ctx context.Context, p pass) error {
	if a.applied != nil {
		want, dropped := p.keys(), false
		for k := range a.applied {
			dropped = dropped || !want[k]
		}
		if !dropped {
			return nil
		}
	}
	id, err := a.cfg.Store.ReadClusterID(ctx)
	if err != nil {
		return err
	}
	if id != a.clusterID {
		return a.mirrorIsOurs(state.HostState{ClusterID: id})
	}
	return nil
}

// desired derives from the mirror what this host should have, resolving
// containers (a Docker round trip, outside the lock).
func (a *Agent) desired(ctx context.Context, st state.HostState) pass {
	p := pass{want: map[string]*core.Desired{}, status: map[string]core.EndpointStatus{}, hold: map[string]bool{}}
	a.reportBad(st.Bad)
	badNet := map[string]error{}
	for _, b := range st.Bad {
		switch {
		case b.Endpoint != "":
			p.status[b.Endpoint] = a.errStatus("undecodable record in etcd (" + strings.TrimPrefix(b.Key, state.Prefix) + "): " + b.Err.Error())
			p.hold[b.Endpoint] = true
		case b.Network != "":
			badNet[b.Network] = b.Err
		}
	}
	wantNet := map[string]map[string]bool{}
	a.resolvedUsed = map[string]bool{}
	defer func() {
		for k := range a.resolved {
			if !a.resolvedUsed[k] {
				delete(a.resolved, k)
			}
		}
	}()
	for _, ep := range st.Local {
		if st.Loading[ep.NetworkKey()] {
			// Its network is being read: leave the endpoint as it is.
			if old, ok := a.written[ep.Key()]; ok {
				p.status[ep.Key()] = old
			}
			p.hold[ep.Key()] = true
			continue
		}
		if err := badNet[ep.NetworkKey()]; err != nil {
			p.status[ep.Key()] = a.errStatus(fmt.Sprintf("network %s: undecodable record in etcd: %v", ep.NetworkKey(), err))
			p.hold[ep.Key()] = true
			continue
		}
		if !ep.Attached() {
			continue
		}
		n, ok := st.Networks[ep.NetworkKey()]
		if !ok {
			p.status[ep.Key()] = a.errStatus(fmt.Sprintf("network %s not found", ep.NetworkKey()))
			continue
		}
		if _, ok := a.cfg.Drivers[n.Driver]; !ok {
			p.status[ep.Key()] = a.errStatus(fmt.Sprintf("driver %q is not enabled on host %s", n.Driver, a.cfg.Host))
			continue
		}
		path, id, err := a.resolve(ctx, ep)
		if err != nil {
			p.status[ep.Key()] = a.errStatus(err.Error())
			p.hold[ep.Key()] = true // a Docker hiccup must not unplug a running container
			continue
		}
		d := p.want[n.Driver]
		if d == nil {
			d = &core.Desired{}
			p.want[n.Driver] = d
			wantNet[n.Driver] = map[string]bool{}
		}
		if !wantNet[n.Driver][n.Key()] {
			wantNet[n.Driver][n.Key()] = true
			d.Networks = append(d.Networks, core.NetworkSpec{Network: n})
		}
		d.Endpoints = append(d.Endpoints, core.EndpointSpec{Endpoint: ep, Net: core.NetworkSpec{Network: n}, NetNSPath: path, NetNSID: id})
	}
	return p
}

// reportBad logs each bad key of the mirror once and counts them.
func (a *Agent) reportBad(bad []state.BadKey) {
	seen := make(map[string]string, len(bad))
	for _, b := range bad {
		seen[b.Key] = b.Err.Error()
		if a.badSeen[b.Key] != b.Err.Error() {
			a.log.WithError(b.Err).WithField("key", b.Key).Error("skipping a record of etcd that cannot be used; the rest is reconciled")
		}
	}
	a.badSeen = seen
	a.cfg.Metrics.badKeys.Set(float64(len(bad)))
}

// program applies a pass to the host: drivers, their remotes, routes. The
// caller holds syncMu.
func (a *Agent) program(ctx context.Context, st state.HostState, p pass) []error {
	var errs []error
	hosts := a.connectedHosts(st.Hosts)
	peers := peersOf(a.cfg.Host, hosts)
	remotes := remotesFor(a.cfg.Host, st.Networks, st.Members, hosts)
	model := st.PolicyModel()
	for name, drv := range a.cfg.Drivers {
		d := p.want[name]
		if d == nil {
			d = &core.Desired{}
		}
		err := a.syncDriver(ctx, drv, *d, p.hold, p.status)
		if err != nil {
			errs = append(errs, fmt.Errorf("driver %s: %w", name, err))
		}
		// After the driver's networks exist, so that their forwarding
		// entries can go in on the same pass. While a served network's
		// mirror is still loading (the first pass after a restart, or a
		// network just gained here) its remotes and routes are unknown, not
		// empty: what is programmed stays until the load pokes another pass,
		// or a restart would flush every forwarding entry and tunnel once.
		if fw, ok := drv.(core.Forwarder); ok && err == nil && len(st.Loading) == 0 {
			r := remotes[name]
			if r == nil {
				r = map[string]core.NetRemotes{}
			}
			if err := fw.SetRemotes(ctx, r); err != nil {
				errs = append(errs, fmt.Errorf("driver %s: remotes: %w", name, err))
			}
		}
		if pe, ok := drv.(core.PolicyEnforcer); ok {
			if err := a.enforcePolicy(ctx, st, model, name, pe); err != nil {
				errs = append(errs, fmt.Errorf("driver %s: %w", name, err))
			}
		}
		if nt, ok := drv.(core.Noter); ok {
			for _, e := range d.Endpoints {
				if es, ok := p.status[e.Key()]; ok {
					es.Note = nt.NetworkNote(e.Net)
					p.status[e.Key()] = es
				}
			}
		}
	}
	if len(st.Loading) > 0 {
		return errs
	}
	if err := a.syncRoutes(st, peers); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// publish tells the other hosts, under the lease, which networks this host
// serves: those it has endpoints on.
func (a *Agent) publish(ctx context.Context, sess *state.HostSession, st state.HostState) error {
	serve := map[string]bool{}
	for _, ep := range st.Local {
		serve[ep.NetworkKey()] = true
	}
	var put, del []string
	for nk := range serve {
		if !a.published[nk] {
			put = append(put, nk)
		}
	}
	for nk := range a.published {
		if !serve[nk] {
			del = append(del, nk)
		}
	}
	if len(put) == 0 && len(del) == 0 {
		return nil
	}
	if err := sess.PublishNetworks(ctx, a.info, put, del); err != nil {
		return err
	}
	for _, nk := range put {
		a.published[nk] = true
	}
	for _, nk := range del {
		delete(a.published, nk)
	}
	return nil
}

// syncRoutes routes every other connected host's block of a routed network
// this host serves to that host's underlay address; a host whose lease
// expired drops out of peers after the grace period, and so do its routes.
func (a *Agent) syncRoutes(st state.HostState, peers []core.Peer) error {
	via := map[string]net.IP{}
	for _, p := range peers {
		if ip := net.ParseIP(p.VTEP); ip != nil {
			via[p.Name] = ip
		}
	}
	var want []routes.Route
	anyRouted := false
	for nk, blocks := range st.Blocks {
		if _, routed := st.Networks[nk].HostBlockLen(); !routed {
			continue
		}
		anyRouted = true
		for _, b := range blocks {
			if gw := via[b.Host]; gw != nil && b.Host != a.cfg.Host {
				want = append(want, routes.Route{Dst: b.Block, Via: gw})
			}
		}
	}
	if !anyRouted && !a.routed {
		return nil // never touch the routing table of a host with no routed network
	}
	if a.routes == nil {
		r, err := routes.New(a.cfg.RouteNetNS)
		if err != nil {
			return err
		}
		a.routes = r
	}
	a.routed = true
	if err := a.routes.Sync(want); err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	return nil
}

func (a *Agent) errStatus(msg string) core.EndpointStatus {
	return core.EndpointStatus{Host: a.cfg.Host, State: core.StateError, Error: msg}
}

func (a *Agent) syncDriver(ctx context.Context, drv core.Driver, d core.Desired, hold map[string]bool, status map[string]core.EndpointStatus) error {
	observeStart := time.Now()
	actual, err := drv.Observe(ctx)
	observed := time.Since(observeStart)
	if err != nil {
		for _, e := range d.Endpoints {
			status[e.Key()] = a.errStatus("observe: " + err.Error())
		}
		return fmt.Errorf("observe: %w", err)
	}
	plan := core.Reconcile(d, actual)
	removeEPs := plan.RemoveEPs[:0]
	for _, o := range plan.RemoveEPs {
		if !hold[o.Key] {
			removeEPs = append(removeEPs, o)
		}
	}
	plan.RemoveEPs = removeEPs
	if len(hold) > 0 {
		// A held endpoint may sit on any of the observed networks: keep them all
		// until resolution works again.
		plan.RemoveNets = nil
	}
	log := a.log.WithField("driver", drv.Name())
	if !plan.Empty() {
		log.WithFields(logrus.Fields{"ensureNets": len(plan.EnsureNets), "ensureEPs": len(plan.EnsureEPs),
			"removeEPs": len(plan.RemoveEPs), "removeNets": len(plan.RemoveNets), "observe": observed.Round(time.Microsecond)}).Info("applying plan")
		defer func(start time.Time) {
			log.WithField("took", time.Since(start).Round(time.Microsecond)).Info("plan applied")
		}(time.Now())
	}
	var errs []error
	netErr := map[string]error{}
	for _, n := range plan.EnsureNets {
		if err := drv.EnsureNetwork(ctx, n); err != nil {
			netErr[n.Key()] = err
			errs = append(errs, fmt.Errorf("ensure network %s: %w", n.Key(), err))
		}
	}
	errs = append(errs, parallel(ctx, a.cfg.Workers, plan.RemoveEPs, func(o core.ObservedEndpoint) error {
		if err := drv.RemoveEndpoint(ctx, o); err != nil {
			return fmt.Errorf("remove endpoint %s: %w", o.Key, err)
		}
		return nil
	})...)
	var mu sync.Mutex
	ensured := map[string]core.ObservedEndpoint{}
	failed := map[string]error{}
	errs = append(errs, parallel(ctx, a.cfg.Workers, plan.EnsureEPs, func(e core.EndpointSpec) error {
		if err := netErr[e.Net.Key()]; err != nil {
			mu.Lock()
			failed[e.Key()] = fmt.Errorf("network: %w", err)
			mu.Unlock()
			return nil // reported once, for the network
		}
		o, err := drv.EnsureEndpoint(ctx, e)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed[e.Key()] = err
			return fmt.Errorf("ensure endpoint %s: %w", e.Key(), err)
		}
		ensured[e.Key()] = o
		return nil
	})...)
	for _, n := range plan.RemoveNets {
		if err := drv.RemoveNetwork(ctx, n); err != nil {
			errs = append(errs, fmt.Errorf("remove network %s: %w", n.Key, err))
		}
	}
	for _, e := range d.Endpoints {
		st := core.EndpointStatus{Host: a.cfg.Host, State: core.StateUp, NetNS: e.NetNSPath}
		o, ok := ensured[e.Key()]
		if !ok {
			o = actual.Endpoints[e.Key()]
		}
		st.IfName, st.IfIndex = o.IfName, o.IfIndex
		if err, bad := failed[e.Key()]; bad {
			st.State, st.Error = core.StateError, err.Error()
		}
		status[e.Key()] = st
	}
	return errors.Join(errs...)
}

// parallel runs f over items with n workers and collects the errors.
func parallel[T any](ctx context.Context, n int, items []T, f func(T) error) []error {
	if len(items) == 0 {
		return nil
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	ch := make(chan T)
	for w := 0; w < min(n, len(items)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range ch {
				if err := f(it); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		ch <- it
	}
	close(ch)
	wg.Wait()
	return errs
}

// resolve finds the namespace of an endpoint and its identity (device:inode),
// refusing anything that is not a network namespace, and the host's own.
func (a *Agent) resolve(ctx context.Context, ep core.Endpoint) (string, string, error) {
	if ep.DockerEndpoint != "" {
		// Docker owns the sandbox's lifetime; see core.SandboxNetNSID. The
		// namespace may not exist yet (Docker joins before it starts the
		// container); once it does, it must be a namespace of its own.
		path, err := core.NetNSPath(ep.NetNS)
		if err != nil {
			return "", "", err
		}
		if _, err := os.Stat(path); err == nil {
			if _, err := nl.CheckNetNS(path, a.hostNS...); err != nil {
				return "", "", err
			}
		}
		return path, core.SandboxNetNSID(path), nil
	}
	if ep.NetNS != "" {
		path, err := core.NetNSPath(ep.NetNS)
		if err != nil {
			return "", "", err
		}
		// Checked once; after that the same device and inode are the same
		// namespace file (no other file system shares nsfs's device).
		if r, ok := a.resolved["netns:"+path]; ok {
			if id, err := nl.NetNSID(path); err == nil && id == r.id {
				a.resolvedUsed["netns:"+path] = true
				return path, id, nil
			}
		}
		id, err := nl.CheckNetNS(path, a.hostNS...)
		if err != nil {
			return "", "", err
		}
		a.resolved["netns:"+path] = resolvedNS{path, id}
		a.resolvedUsed["netns:"+path] = true
		return path, id, nil
	}
	if r, ok := a.resolved[ep.ContainerID]; ok {
		if id, err := nl.NetNSID(r.path); err == nil && id == r.id {
			a.resolvedUsed[ep.ContainerID] = true
			return r.path, r.id, nil // same process, same namespace: no Docker round trip
		}
		delete(a.resolved, ep.ContainerID)
	}
	if a.cfg.Containers == nil {
		return "", "", fmt.Errorf("container %s: no Docker connection on host %s", ep.ContainerName, a.cfg.Host)
	}
	path, err := a.cfg.Containers.NetNSPath(ctx, ep.ContainerID)
	if err != nil {
		return "", "", err
	}
	// A container run with --network host shares the host's namespace.
	id, err := nl.CheckNetNS(path, a.hostNS...)
	if err != nil {
		return "", "", fmt.Errorf("container %s: %w", ep.ContainerName, err)
	}
	a.resolved[ep.ContainerID] = resolvedNS{path, id}
	a.resolvedUsed[ep.ContainerID] = true
	return path, id, nil
}

// writeStatus writes the status that changed and deletes status of endpoints
// that are no longer attached here.
func (a *Agent) writeStatus(ctx context.Context, sess *state.HostSession, status map[string]core.EndpointStatus, hold map[string]bool) error {
	put := map[string]core.EndpointStatus{}
	for k, st := range status {
		if old, ok := a.written[k]; !ok || old != st {
			put[k] = st
		}
	}
	var del []string
	for k := range a.written {
		if _, ok := status[k]; !ok {
			del = append(del, k)
		}
	}
	for k := range a.inherited {
		if _, ok := status[k]; !ok && !hold[k] {
			del = append(del, k)
		}
	}
	if len(put) == 0 && len(del) == 0 {
		return nil
	}
	if err := sess.WriteStatus(ctx, put, del); err != nil {
		return err
	}
	for k, st := range put {
		a.written[k] = st
		delete(a.inherited, k)
	}
	for _, k := range del {
		delete(a.written, k)
		delete(a.inherited, k)
	}
	return nil
}
