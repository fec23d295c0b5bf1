package agent

// What this host needs to know about the others to join them: the hosts to
// keep tunnels and routes to (live ones, and for a grace period those whose
// lease just went), and for each network with endpoints here, where its
// endpoints elsewhere are.

import (
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/netplugin/netplugin/core"
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

// connectedHosts returns the hosts this one stays connected to (see
// hostMemory): those that publish serving a network this host serves, and
// for the grace period those that stopped. It arranges a sync for when the
// next one's grace period ends so that it is dropped on time, not a resync
// later.
func (a *Agent) connectedHosts(byNet map[string][]core.HostInfo) []core.HostInfo {
	var live []core.HostInfo
	seen := map[string]bool{}
	for _, nk := range slices.Sorted(maps.Keys(byNet)) {
		for _, h := range byNet[nk] {
			if !seen[h.Name] {
				seen[h.Name] = true
				live = append(live, h)
			}
		}
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
	return hosts
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
// what it had. members are the endpoints of each network on every host, as
// the host's view (state.HostView) holds them; already sorted by host and
// MAC, they cost no sort. It reads nothing but its arguments.
func remotesFor(self string, nets map[string]core.Network, members map[string][]core.Endpoint, hosts []core.HostInfo) map[string]map[string]core.NetRemotes {
	byName := make(map[string]core.HostInfo, len(hosts))
	for _, h := range hosts {
		byName[h.Name] = h
	}
	out := map[string]map[string]core.NetRemotes{}
	for nk, eps := range members {
		n, ok := nets[nk]
		if !ok || !slices.ContainsFunc(eps, func(e core.Endpoint) bool { return e.Host == self && e.Attached() }) {
			continue
		}
		var r core.NetRemotes
		seen := map[string]bool{}
		for _, e := range eps {
			if e.Host == self || !e.Attached() {
				continue
			}
			h, known := byName[e.Host]
			if !known || h.VTEP == "" || !slices.Contains(h.Drivers, n.Driver) {
				continue
			}
			r.Endpoints = append(r.Endpoints, core.Remote{MAC: e.MAC, IP: e.IP, Host: e.Host, VTEP: h.VTEP})
			if !seen[h.Name] {
				seen[h.Name] = true
				r.Hosts = append(r.Hosts, core.Peer{Name: h.Name, VTEP: h.VTEP})
			}
		}
		slices.SortFunc(r.Endpoints, func(a, b core.Remote) int {
			if c := strings.Compare(a.Host, b.Host); c != 0 {
				return c
			}
			return strings.Compare(a.MAC, b.MAC)
		})
		slices.SortFunc(r.Hosts, func(a, b core.Peer) int { return strings.Compare(a.Name, b.Name) })
		if out[n.Driver] == nil {
			out[n.Driver] = map[string]core.NetRemotes{}
		}
		out[n.Driver][nk] = r
	}
	return out
}
