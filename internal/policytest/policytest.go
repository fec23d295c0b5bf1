// Package policytest holds the policy and profile scenarios every driver
// that implements core.PolicyEnforcer must pass, by traffic between network
// namespaces on simulated hosts, against the oracle of the policy model
// (core.PolicyModel.Verdict). A driver's test supplies its hosts (Host).
package policytest

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/nstest"
)

// Host is one simulated host of the driver under test.
type Host interface {
	// Name is the host label (endpoints' Host).
	Name() string
	// VTEP is the host's underlay address.
	VTEP() string
	// Ensure programs networks then endpoints and returns once the
	// endpoints' ports pass traffic (as far as the dataplane is concerned).
	Ensure(t *testing.T, nets []core.NetworkSpec, eps []core.EndpointSpec)
	SetRemotes(t *testing.T, r map[string]core.NetRemotes)
	SetPolicy(t *testing.T, p core.HostPolicy) int64
	// Restart replaces the driver with a new one on the same dataplane, as
	// a restarted agent; it fails the test if the agent's first plan
	// (Observe, Reconcile) would change anything, and returns the
	// generation the new driver found in force.
	Restart(t *testing.T, want core.Desired) int64
	// Written identifies the last rewrite of the policy in the dataplane:
	// it changes when the rules are written again.
	Written(t *testing.T) string
	// Remove unplugs endpoints and networks.
	Remove(t *testing.T, nets []core.NetworkSpec, eps []core.EndpointSpec)
	// Leaks lists what of the driver's is left on the host.
	Leaks(t *testing.T) []string
}

// Env is a policy scenario: hosts, networks, endpoints by name, and the
// policy model, which is the oracle too.
type Env struct {
	T      *testing.T
	P      string // name prefix of everything made
	Driver string
	Hosts  []Host
	Nets   []core.NetworkSpec
	EPs    map[string]core.EndpointSpec
	Order  []string
	Model  core.PolicyModel
	// Encap of the networks Network makes (VXLAN unless set).
	Encap string
}

// New returns a scenario on hosts.
func New(t *testing.T, prefix, driver string, hosts ...Host) *Env {
	for _, tool := range []string{"iperf3", "nft", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install %s)", tool, map[string]string{"iperf3": "iperf3", "nft": "nftables", "conntrack": "conntrack"}[tool])
		}
	}
	return &Env{T: t, P: prefix, Driver: driver, Hosts: hosts, EPs: map[string]core.EndpointSpec{}, Encap: core.EncapVXLAN}
}

// Network adds a network of tenant (prefixed) to the model.
func (e *Env) Network(tenant, name string, tag int, subnet string) core.NetworkSpec {
	n := core.NetworkSpec{Network: core.Network{Tenant: e.P + tenant, Name: name, Driver: e.Driver, Encap: e.Encap, Tag: tag,
		Subnet: subnet, Gateway: strings.TrimSuffix(subnet, "0/24") + "254"}}
	e.Nets = append(e.Nets, n)
	e.Model.Networks = append(e.Model.Networks, n.Network)
	return n
}

// Endpoint makes the namespace (P + name) and spec of an endpoint on h, not
// plugged in yet.
func (e *Env) Endpoint(name, ip string, n core.NetworkSpec, h Host, group string) core.EndpointSpec {
	ns := nstest.NS(e.T, e.P+name)
	id, err := nl.NetNSID(nstest.Path(ns))
	if err != nil {
		e.T.Fatal(err)
	}
	last := len(e.EPs) + 1
	ep := core.EndpointSpec{
		Endpoint: core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: name, IP: ip, Host: h.Name(), Group: group,
			MAC: fmt.Sprintf("02:42:0a:59:%02x:%02x", last/256, last%256)},
		Net:       n,
		NetNSPath: nstest.Path(ns), NetNSID: id,
	}
	e.EPs[name] = ep
	e.Order = append(e.Order, name)
	e.Model.Endpoints = append(e.Model.Endpoints, ep.Endpoint)
	return ep
}

// Group adds a group of tenant to the model.
func (e *Env) Group(tenant, name, network string, policies ...string) {
	e.Model.Groups = append(e.Model.Groups, core.Group{Tenant: e.P + tenant, Name: name, Network: network, Policies: policies})
}

// Policy sets (adds or replaces) a policy of tenant.
func (e *Env) Policy(tenant, name string, rules ...core.Rule) {
	for i := range e.Model.Policies {
		if e.Model.Policies[i].Tenant == e.P+tenant && e.Model.Policies[i].Name == name {
			e.Model.Policies[i].Rules = rules
			return
		}
	}
	e.Model.Policies = append(e.Model.Policies, core.Policy{Tenant: e.P + tenant, Name: name, Rules: rules})
}

// Rule builds a rule.
func Rule(name string, prio int, dir, action string, mod func(*core.Rule)) core.Rule {
	r := core.Rule{Name: name, Priority: prio, Direction: dir, Action: action}
	if mod != nil {
		mod(&r)
	}
	return r
}

func (e *Env) host(name string) Host {
	for _, h := range e.Hosts {
		if h.Name() == name {
			return h
		}
	}
	e.T.Fatalf("no host %s", name)
	return nil
}

// Plug ensures the networks and the named endpoints on their hosts, then
// gives every host the others' endpoints.
func (e *Env) Plug(names ...string) {
	e.T.Helper()
	for _, h := range e.Hosts {
		var eps []core.EndpointSpec
		for _, n := range names {
			if ep := e.EPs[n]; ep.Host == h.Name() {
				eps = append(eps, ep)
			}
		}
		h.Ensure(e.T, e.Nets, eps)
	}
	e.Remotes()
}

// Remotes gives every host the endpoints of the model on the other hosts.
func (e *Env) Remotes() {
	e.T.Helper()
	for _, h := range e.Hosts {
		r := map[string]core.NetRemotes{}
		for _, n := range e.Nets {
			r[n.Key()] = core.NetRemotes{}
		}
		for _, name := range e.Order {
			ep := e.EPs[name]
			if ep.Host == h.Name() {
				continue
			}
			other := e.host(ep.Host)
			nr := r[ep.Net.Key()]
			nr.Endpoints = append(nr.Endpoints, core.Remote{MAC: ep.MAC, IP: ep.IP, Host: other.Name(), VTEP: other.VTEP()})
			if len(nr.Hosts) == 0 || nr.Hosts[len(nr.Hosts)-1].Name != other.Name() {
				nr.Hosts = append(nr.Hosts, core.Peer{Name: other.Name(), VTEP: other.VTEP()})
			}
			r[ep.Net.Key()] = nr
		}
		h.SetRemotes(e.T, r)
	}
}

// Compile is the model compiled for host h.
func (e *Env) Compile(h Host) core.HostPolicy {
	e.T.Helper()
	hp, errs := core.CompileHost(e.Model, h.Name(), e.Driver)
	if len(errs) > 0 {
		e.T.Fatalf("compile for %s: %v", h.Name(), errs)
	}
	// What the agent adds: where each endpoint lives.
	for i, pe := range hp.Endpoints {
		for _, ep := range e.EPs {
			if ep.Key() == pe.Key {
				hp.Endpoints[i].NetNSPath = ep.NetNSPath
			}
		}
	}
	return hp
}

// Apply compiles the model as generation gen and applies it on every host.
func (e *Env) Apply(gen int64) {
	e.T.Helper()
	e.Model.Generation = gen
	for _, h := range e.Hosts {
		if got := h.SetPolicy(e.T, e.Compile(h)); got != gen {
			e.T.Fatalf("%s applied generation %d, want %d", h.Name(), got, gen)
		}
	}
}

// Serve answers the matrix probes in the named endpoints' namespaces.
func (e *Env) Serve(names ...string) {
	for _, n := range names {
		nstest.ServeProbes(e.T, e.P+n, nstest.MatrixProbes)
	}
}

// Matrix checks every probe between the named endpoints against the oracle.
func (e *Env) Matrix(names ...string) {
	e.T.Helper()
	var peers []nstest.Peer
	for _, n := range names {
		ep := e.EPs[n]
		peers = append(peers, nstest.Peer{Name: n, NS: e.P + n, IP: ep.IP, Net: ep.Net.Key()})
	}
	nstest.Matrix(e.T, peers, nstest.MatrixProbes, func(s, d nstest.Peer, pr nstest.Probe) bool {
		return e.Model.Verdict(e.EPs[s.Name].Endpoint, e.EPs[d.Name].Endpoint, pr.Proto, pr.Port)
	})
}

// Desired is what host h should have of the scenario, as the agent computes it.
func (e *Env) Desired(h Host) core.Desired {
	var d core.Desired
	d.Networks = e.Nets
	for _, name := range e.Order {
		if ep := e.EPs[name]; ep.Host == h.Name() {
			d.Endpoints = append(d.Endpoints, ep)
		}
	}
	return d
}

// RemoveAll unplugs everything, applies an empty policy and checks that
// nothing of the driver's is left on any host.
func (e *Env) RemoveAll() {
	e.T.Helper()
	for _, h := range e.Hosts {
		d := e.Desired(h)
		h.Remove(e.T, d.Networks, d.Endpoints)
		h.SetPolicy(e.T, core.HostPolicy{Generation: 1 << 40})
		if left := h.Leaks(e.T); len(left) > 0 {
			e.T.Errorf("%s: left behind: %v", h.Name(), left)
		}
	}
}
