package state

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
)

// HostView is one agent's mirror of the store, scoped to its host: the
// cluster ID, the endpoints homed on the host (index/host/<h>/ep/) and, for
// each network they are on, the network, its endpoints on every host
// (index/net/<t>/<n>/), the hosts serving it (nethosts/<t>/<n>/) and their
// routed blocks (alloc/block/<t>/<n>/). The networks' watches start when the
// first endpoint of a network arrives on the host and stop when the last
// leaves, so the agent never hears of a network it does not serve.
//
// Policy extends it the same way (viewpolicy.go): a range per group of the
// host's endpoints, per policy and profile those groups name, and per group
// or network those policies' rules name as a peer.
type HostView struct {
	s    *Store
	host string
	log  *logrus.Entry
	poke func()
	// events counts the watch events of every cache the view ever ran.
	events atomic.Int64

	cluster *Cache[string]
	local   *Cache[core.Endpoint]

	mu   sync.Mutex
	ctx  context.Context
	nets map[string]*netView
	pol  *policyRanges // see viewpolicy.go

	// snapMu serialises Snapshot, whose memos it guards.
	snapMu    sync.Mutex
	localMemo memo[[]core.Endpoint]
}

// netView is the mirror of one served network, with what Snapshot derived
// from it last (rebuilt only when its cache changed).
type netView struct {
	cancel  context.CancelFunc
	spec    *Cache[core.Network]
	members *Cache[core.Endpoint]
	hosts   *Cache[core.HostInfo]
	blocks  *Cache[string]

	memberMemo memo[[]core.Endpoint]
	hostMemo   memo[[]core.HostInfo]
}

// memo is a value derived from a cache, kept until the cache changes: a
// sync that follows an event elsewhere in the view copies nothing of the
// networks that did not change.
type memo[V any] struct {
	gen   uint64
	valid bool
	v     V
	bad   []BadKey
}

func memoOf[T, V any](m *memo[V], c *Cache[T], build func() (V, []BadKey)) (V, []BadKey) {
	g := c.generation()
	if !m.valid || m.gen != g {
		m.v, m.bad = build()
		m.gen, m.valid = g, true
	}
	return m.v, m.bad
}

func (n *netView) ready() bool {
	return n.spec.isReady() && n.members.isReady() && n.hosts.isReady() && n.blocks.isReady()
}

// WatchHost returns host's view; Run keeps it. poke is called after every change.
func (s *Store) WatchHost(host string, poke func()) *HostView {
	v := &HostView{s: s, host: host, log: s.log.WithField("view", host), poke: poke, nets: map[string]*netView{}, pol: newPolicyRanges()}
	v.cluster = newCache(s.cli, keyCluster, exactEnd(keyCluster), func(_ string, b []byte) (string, error) {
		return DecodeClusterID(b)
	}, poke, v.log, &v.events)
	prefix := hostEndpointsOf(host)
	v.local = newCache(s.cli, prefix, prefixEnd(prefix), func(k string, b []byte) (core.Endpoint, error) {
		return decodeIndexedEndpoint(k, b, prefix, host)
	}, v.refresh, v.log, &v.events)
	return v
}

func exactEnd(key string) string { return key + "\x00" }

func prefixEnd(prefix string) string {
	b := []byte(prefix)
	b[len(b)-1]++ // every prefix here ends in '/'
	return string(b)
}

// Run keeps the view until ctx ends.
func (v *HostView) Run(ctx context.Context) {
	v.mu.Lock()
	v.ctx = ctx
	v.mu.Unlock()
	go v.cluster.Run(ctx)
	v.local.Run(ctx)
	v.mu.Lock()
	for k, n := range v.nets {
		n.cancel()
		delete(v.nets, k)
	}
	v.pol.stop()
	v.mu.Unlock()
}

// Ready is closed once the cluster ID and the host's endpoints are listed.
// Networks listed later hold their endpoints (State.Loading) meanwhile.
func (v *HostView) Ready() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		<-v.cluster.Ready()
		<-v.local.Ready()
		close(ch)
	}()
	return ch
}

// Events counts the watch events the view received, over all its ranges.
func (v *HostView) Events() int64 { return v.events.Load() }

// WaitRev waits until the host's endpoints reflect revision rev: a write of
// one of them (the Docker plugin's) has arrived.
func (v *HostView) WaitRev(ctx context.Context, rev int64) error { return v.local.WaitRev(ctx, rev) }

// refresh starts the watches of networks that gained their first endpoint
// here and stops those of networks that lost their last.
func (v *HostView) refresh() {
	want := map[string]bool{}
	v.local.each(func(_ string, it Item[core.Endpoint]) {
		if it.Err == nil {
			want[it.Value.NetworkKey()] = true
		}
	})
	v.mu.Lock()
	if v.ctx != nil {
		for k, n := range v.nets {
			if !want[k] {
				n.cancel()
				delete(v.nets, k)
			}
		}
		for k := range want {
			if v.nets[k] == nil {
				v.nets[k] = v.startNet(k)
			}
		}
	}
	v.mu.Unlock()
	v.refreshPolicy()
	v.poke()
}

// startNet runs the watches of network nk; v.mu must be held.
func (v *HostView) startNet(nk string) *netView {
	t, name, _ := strings.Cut(nk, "/")
	ctx, cancel := context.WithCancel(v.ctx)
	n := &netView{cancel: cancel}
	key := networkKey(t, name)
	n.spec = newCache(v.s.cli, key, exactEnd(key), func(k string, b []byte) (core.Network, error) {
		return decodeNetwork(k, b)
	}, v.poke, v.log, &v.events)
	members := netEndpointsOf(t, name)
	n.members = newCache(v.s.cli, members, prefixEnd(members), func(k string, b []byte) (core.Endpoint, error) {
		return decodeIndexedEndpoint(k, b, members, "")
	}, v.poke, v.log, &v.events)
	hosts := netHostsOf(t, name)
	n.hosts = newCache(v.s.cli, hosts, prefixEnd(hosts), func(k string, b []byte) (core.HostInfo, error) {
		var r hostRecord
		if err := json.Unmarshal(b, &r); err != nil {
			return core.HostInfo{}, err
		}
		if r.Name != lastSegment(k) {
			return core.HostInfo{}, fmt.Errorf("names host %q", r.Name)
		}
		return r.HostInfo, nil
	}, v.poke, v.log, &v.events)
	blocks := blocksOf(t, name)
	n.blocks = newCache(v.s.cli, blocks, prefixEnd(blocks), func(k string, b []byte) (string, error) {
		if net.ParseIP(lastSegment(k)).To4() == nil || core.ValidName("host", string(b)) != nil {
			return "", fmt.Errorf("not a routed block")
		}
		return string(b), nil
	}, v.poke, v.log, &v.events)
	for _, c := range []interface{ Run(context.Context) }{n.spec, n.members, n.hosts, n.blocks} {
		go c.Run(ctx)
	}
	return n
}

// decodeNetwork decodes a network record and checks it is the one its key names.
func decodeNetwork(k string, b []byte) (core.Network, error) {
	var n core.Network
	if err := json.Unmarshal(b, &n); err != nil {
		return n, err
	}
	if networkKey(n.Tenant, n.Name) != k {
		return n, fmt.Errorf("names network %s", n.Key())
	}
	if _, err := core.ParseCIDR(n.Subnet); err != nil {
		return n, err
	}
	return n, nil
}

// decodeIndexedEndpoint decodes an index copy of an endpoint (prefix +
// <tenant>/<name>, or <name> under a network's prefix) and checks that it is
// the endpoint its key names, homed on host (when not "").
func decodeIndexedEndpoint(k string, b []byte, prefix, host string) (core.Endpoint, error) {
	var e core.Endpoint
	rest := strings.TrimPrefix(k, prefix)
	slashes := 1 // <tenant>/<name> under a host
	if host == "" {
		slashes = 0 // <name> under a network
	}
	if strings.Count(rest, "/") != slashes {
		return e, fmt.Errorf("a key of a layout this version does not know")
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, err
	}
	want := e.Key()
	if host == "" {
		want = e.Name
	}
	switch {
	case rest != want:
		return e, fmt.Errorf("names endpoint %s", e.Key())
	case host != "" && e.Host != host:
		return e, fmt.Errorf("endpoint %s is homed on %q", e.Key(), e.Host)
	case core.ValidName("network", e.Network) != nil:
		return e, fmt.Errorf("endpoint %s names no valid network", e.Key())
	}
	if _, err := core.ParseIPv4(e.IP); err != nil {
		return e, fmt.Errorf("endpoint %s: %w", e.Key(), err)
	}
	return e, nil
}

// BadKey is a key of the view that could not be used: undecodable, or of a
// layout or content this version does not know. It is skipped; the rest of
// the view is unaffected.
type BadKey struct {
	Key string
	// Endpoint is the key (tenant/name) of the endpoint homed on this host
	// the bad key stands for, when it is one, so that its status can say so.
	Endpoint string
	// Network is the key of the network a bad network record stands for.
	Network string
	Err     error
}

// HostState is a snapshot of a HostView.
type HostState struct {
	// ClusterID is the store's cluster ID; ClusterErr says why there is none.
	ClusterID  string
	ClusterErr error
	// Local are the endpoints homed on the host.
	Local []core.Endpoint
	// Networks are the served networks whose record is known; a served
	// network missing from it and from Loading does not exist.
	Networks map[string]core.Network
	// Loading are served networks whose mirror is not complete yet: their
	// endpoints must be left as they are.
	Loading map[string]bool
	// Members are the endpoints of each served network, on every host.
	Members map[string][]core.Endpoint
	// Hosts are the hosts that serve each network, as they published themselves.
	Hosts map[string][]core.HostInfo
	// Blocks are the hosts' blocks of each routed network (its block length
	// is the network's).
	Blocks map[string][]HostBlock
	// Policy is what the host's policy is compiled from (see PolicyModel).
	Policy PolicyState
	Bad    []BadKey
}

// Snapshot returns what the view holds now. Its slices are shared with the
// view and with earlier snapshots: read them, never change them.
func (v *HostView) Snapshot() HostState {
	v.snapMu.Lock()
	defer v.snapMu.Unlock()
	st := HostState{Networks: map[string]core.Network{}, Loading: map[string]bool{}, Members: map[string][]core.Endpoint{},
		Hosts: map[string][]core.HostInfo{}, Blocks: map[string][]HostBlock{}}
	v.cluster.each(func(k string, it Item[string]) {
		st.ClusterID, st.ClusterErr = it.Value, it.Err
	})
	prefix := hostEndpointsOf(v.host)
	var bad []BadKey
	st.Local, bad = memoOf(&v.localMemo, v.local, func() ([]core.Endpoint, []BadKey) {
		var eps []core.Endpoint
		var bad []BadKey
		v.local.each(func(k string, it Item[core.Endpoint]) {
			if it.Err != nil {
				b := BadKey{Key: k, Err: it.Err}
				if rest := strings.TrimPrefix(k, prefix); strings.Count(rest, "/") == 1 && core.ValidName("", lastSegment(rest)) == nil {
					b.Endpoint = rest
				}
				bad = append(bad, b)
				return
			}
			eps = append(eps, it.Value)
		})
		sort.Slice(eps, func(i, j int) bool { return eps[i].Key() < eps[j].Key() })
		return eps, bad
	})
	st.Bad = append(st.Bad, bad...)
	v.mu.Lock()
	nets := make(map[string]*netView, len(v.nets))
	for k, n := range v.nets {
		nets[k] = n
	}
	v.mu.Unlock()
	for nk, n := range nets {
		if !n.ready() {
			st.Loading[nk] = true
			continue
		}
		n.spec.each(func(k string, it Item[core.Network]) {
			if it.Err != nil {
				st.Bad = append(st.Bad, BadKey{Key: k, Network: nk, Err: it.Err})
				return
			}
			st.Networks[nk] = it.Value
		})
		st.Members[nk], bad = memoOf(&n.memberMemo, n.members, func() ([]core.Endpoint, []BadKey) {
			var eps []core.Endpoint
			var bad []BadKey
			n.members.each(func(k string, it Item[core.Endpoint]) {
				if it.Err != nil {
					bad = append(bad, BadKey{Key: k, Err: it.Err})
					return
				}
				eps = append(eps, it.Value)
			})
			// By host, then MAC: the order the agent hands remotes to drivers in.
			sort.Slice(eps, func(i, j int) bool {
				if eps[i].Host != eps[j].Host {
					return eps[i].Host < eps[j].Host
				}
				return eps[i].MAC < eps[j].MAC
			})
			return eps, bad
		})
		st.Bad = append(st.Bad, bad...)
		st.Hosts[nk], bad = memoOf(&n.hostMemo, n.hosts, func() ([]core.HostInfo, []BadKey) {
			var hs []core.HostInfo
			var bad []BadKey
			n.hosts.each(func(k string, it Item[core.HostInfo]) {
				if it.Err != nil {
					bad = append(bad, BadKey{Key: k, Err: it.Err})
					return
				}
				hs = append(hs, it.Value)
			})
			sort.Slice(hs, func(i, j int) bool { return hs[i].Name < hs[j].Name })
			return hs, bad
		})
		st.Bad = append(st.Bad, bad...)
		blen, routed := st.Networks[nk].HostBlockLen()
		n.blocks.each(func(k string, it Item[string]) {
			if it.Err != nil {
				st.Bad = append(st.Bad, BadKey{Key: k, Err: it.Err})
				return
			}
			if routed {
				st.Blocks[nk] = append(st.Blocks[nk], HostBlock{Host: it.Value,
					Block: &net.IPNet{IP: net.ParseIP(lastSegment(k)).To4(), Mask: net.CIDRMask(blen, 32)}})
			}
		})
	}
	st.Policy = v.policySnapshot()
	sort.Slice(st.Bad, func(i, j int) bool { return st.Bad[i].Key < st.Bad[j].Key })
	return st
}
