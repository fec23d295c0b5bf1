package agent

// What this host needs to know about the others to join them: the hosts to
// keep tunnels and routes to (live ones, and for a grace period those whose
// lease just went), and for each network with endpoints here, where its
// endpoints elsewhere are.

import (
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// hostMemory remembers when the agent last saw each host's lease key, so that
// a host whose agent restarts or crashes keeps its tunnels, routes and
// forwarding entries on the other hosts for a grace period: its dataplane
// keeps running without its agent, and a restarted agent adopts it.
type hostMemory struct {
	seen map[string]seenHost
}

type seenHost struct {
	info core.HostInfo
	last time.Time
}

// update records the live hosts at now and returns the hosts to connect to,
// sorted by name: the live ones, and those last seen less than grace ago (as
// they were last published). next is when the earliest of those expires
// (zero if none is in its grace period), for a sync at that moment.
func (m *hostMemory) update(live []core.HostInfo, now time.Time, grace time.Duration) (hosts []core.HostInfo, next time.Time) {
	if m.seen == nil {
		m.seen = map[string]seenHost{}
	}
	isLive := make(map[string]bool, len(live))
	for _, h := range live {
		isLive[h.Name] = true
		m.seen[h.Name] = seenHost{info: h, last: now}
	}
	for name, s := range m.seen {
		if isLive[name] {
			hosts = append(hosts, s.info)
			continue
		}
		expires := s.last.Add(grace)
		if !now.Before(expires) {
			delete(m.seen, name)
			continue
		}
		hosts = append(hosts, s.info)
		if next.IsZero() || expires.Before(next) {
			next = expires
		}
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	return hosts, next
}

// connectedHosts reads the hosts mirror and returns the hosts this one stays
// connected to (see hostMemory), arranging a sync for when the next one's
// grace period ends so that it is dropped on time, not a resync later.
func (a *Agent) connectedHosts() ([]core.HostInfo, error) {
	kvs, _ := a.hosts.Snapshot()
	live, err := state.DecodeHosts(kvs)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	hosts, next := a.hostMem.update(live, now, a.cfg.HostGrace)
	if !next.IsZero() {
		if a.graceTimer == nil {
			a.graceTimer = time.AfterFunc(next.Sub(now), a.Poke)
		} else {
			a.graceTimer.Reset(next.Sub(now))
		}
	}
	return hosts, nil
}

// peersOf lists the hosts other than self as peers.
func peersOf(self string, hosts []core.HostInfo) []core.Peer {
	var out []core.Peer
	for _, h := range hosts {
		if h.Name != self {
			out = append(out, core.Peer{Name: h.Name, VTEP: h.VTEP})
		}
	}
	return out
}

// remotesFor derives, per driver, what each network with an endpoint attached
// on host self has elsewhere: its attached endpoints on the other hosts of
// hosts, and those hosts, counting only hosts that run the network's driver
// and publish a VTEP (nothing else can carry the network to them). Every such
// network is in the result, also with nothing remote, so that a driver drops
// what it had. It reads nothing but its arguments: today they come from the
// mirror of the whole config, later a scoped watch can feed it as it is.
func remotesFor(self string, nets map[string]core.Network, eps []core.Endpoint, hosts []core.HostInfo) map[string]map[string]core.NetRemotes {
	byName := make(map[string]core.HostInfo, len(hosts))
	for _, h := range hosts {
		byName[h.Name] = h
	}
	out := map[string]map[string]core.NetRemotes{}
	for _, e := range eps {
		n, ok := nets[e.NetworkKey()]
		if !ok || e.Host != self || !e.Attached() {
			continue
		}
		if out[n.Driver] == nil {
			out[n.Driver] = map[string]core.NetRemotes{}
		}
		out[n.Driver][n.Key()] = core.NetRemotes{}
	}
	for _, e := range eps {
		n, ok := nets[e.NetworkKey()]
		if !ok || e.Host == self || !e.Attached() {
			continue
		}
		r, local := out[n.Driver][n.Key()]
		h, known := byName[e.Host]
		if !local || !known || h.VTEP == "" || !slices.Contains(h.Drivers, n.Driver) {
			continue
		}
		r.Endpoints = append(r.Endpoints, core.Remote{MAC: e.MAC, IP: e.IP, Host: e.Host, VTEP: h.VTEP})
		if !slices.ContainsFunc(r.Hosts, func(p core.Peer) bool { return p.Name == h.Name }) {
			r.Hosts = append(r.Hosts, core.Peer{Name: h.Name, VTEP: h.VTEP})
		}
		out[n.Driver][n.Key()] = r
	}
	for _, byNet := range out {
		for k, r := range byNet {
			slices.SortFunc(r.Endpoints, func(a, b core.Remote) int {
				if c := strings.Compare(a.Host, b.Host); c != 0 {
					return c
				}
				return strings.Compare(a.MAC, b.MAC)
			})
			slices.SortFunc(r.Hosts, func(a, b core.Peer) int { return strings.Compare(a.Name, b.Name) })
			byNet[k] = r
		}
	}
	return out
}
