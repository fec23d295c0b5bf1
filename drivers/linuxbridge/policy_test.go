package linuxbridge

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/policytest"
)

// polHost is a simulated host for the shared policy scenarios.
type polHost struct{ *lbHost }

var _ policytest.Host = polHost{}

func (h polHost) Name() string { return h.ns }
func (h polHost) VTEP() string { return h.vtep }

func (h polHost) Ensure(t *testing.T, nets []core.NetworkSpec, eps []core.EndpointSpec) {
	t.Helper()
	h.ensure(t, nets, eps)
}

func (h polHost) SetRemotes(t *testing.T, r map[string]core.NetRemotes) {
	t.Helper()
	h.setRemotes(t, r)
}

func (h polHost) SetPolicy(t *testing.T, p core.HostPolicy) int64 {
	t.Helper()
	var gen int64
	on(t, h.ns, func() {
		var err error
		if gen, err = h.drv.SetPolicy(context.Background(), p); err != nil {
			t.Fatalf("%s: SetPolicy: %v", h.ns, err)
		}
	})
	return gen
}

func (h polHost) Restart(t *testing.T, want core.Desired) int64 {
	t.Helper()
	d, err := New(testLog(), h.drv.cfg)
	if err != nil {
		t.Fatal(err)
	}
	var gen int64
	on(t, h.ns, func() {
		ctx := context.Background()
		if gen, err = d.AppliedPolicy(ctx); err != nil {
			t.Fatal(err)
		}
		act, err := d.Observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if plan := core.Reconcile(want, act); !plan.Empty() {
			t.Fatalf("%s: a restarted agent would change %+v", h.ns, plan)
		}
	})
	h.drv = d
	return gen
}

// Written is the comment of the bridge table, which names the generation
// the rules were last written at.
func (h polHost) Written(t *testing.T) string {
	for _, l := range strings.Split(nstest.Exec(t, h.ns, "nft", "-t", "list", "table", "bridge", TableName(h.ns)), "\n") {
		if strings.Contains(l, "comment") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func (h polHost) Remove(t *testing.T, nets []core.NetworkSpec, eps []core.EndpointSpec) {
	t.Helper()
	on(t, h.ns, func() {
		for i := 0; i < 2; i++ { // the second round must be a no-op
			for _, e := range eps {
				if err := h.drv.RemoveEndpoint(context.Background(), core.ObservedEndpoint{Key: e.Key()}); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range nets {
				if err := h.drv.RemoveNetwork(context.Background(), core.ObservedNetwork{Key: n.Key()}); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}

// Leaks lists links marked as ours, our tables and ifb devices.
func (h polHost) Leaks(t *testing.T) []string {
	var left []string
	on(t, h.ns, func() { left = nstest.MarkedLinks(t, h.ns) })
	left = append(left, ours(t, h.lbHost)...)
	if out := strings.TrimSpace(nstest.Exec(t, h.ns, "ip", "-o", "link", "show", "type", "ifb")); out != "" {
		left = append(left, out)
	}
	return left
}

func newPolicyEnv(t *testing.T, hosts int) (*policytest.Env, []polHost) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	var hs []polHost
	var ph []policytest.Host
	for _, h := range underlay(t, p, hosts, nil) {
		hs = append(hs, polHost{h})
		ph = append(ph, polHost{h})
		t.Cleanup(func() { // the tables go with the host namespace; and in case a test failed half-way
			for _, fam := range []string{"inet", "bridge"} {
				_ = exec.Command("ip", "netns", "exec", h.ns, "nft", "delete", "table", fam, TableName(h.ns)).Run()
			}
		})
	}
	return policytest.New(t, p, Name, ph...), hs
}

// ours lists the nftables tables of host h that are named as ours.
func ours(t *testing.T, h *lbHost) []string {
	t.Helper()
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(nstest.Exec(t, h.ns, "nft", "list", "tables")), "\n") {
		if strings.HasSuffix(l, " "+TableName(h.ns)) {
			got = append(got, l)
		}
	}
	return got
}

// The matrix scenario (three groups on two hosts over VXLAN, a second
// tenant with the same addresses) by traffic against the oracle; the second
// tenant's network has a conntrack zone of its own on both hosts; a foreign
// table is never touched; nothing of ours is left at the end.
func TestPolicyMatrix(t *testing.T) {
	e, hs := newPolicyEnv(t, 2)
	nstest.Exec(t, hs[0].ns, "nft", "add table inet foreign; add chain inet foreign c { type filter hook forward priority 10; policy accept; }; add rule inet foreign c counter")
	policytest.Matrix(e, hs[0], hs[1])
	a, b := e.Nets[0], e.Nets[1]
	for _, h := range hs {
		out := nstest.Exec(t, h.ns, "nft", "list", "map", "inet", TableName(h.ns), "zones")
		if !strings.Contains(out, BridgeName(h.ns, b.Key())+`" : 1`) || strings.Contains(out, BridgeName(h.ns, a.Key())) {
			t.Fatalf("%s zones:\n%s", h.ns, out)
		}
	}
	e.RemoveAll()
	if out := nstest.Exec(t, hs[0].ns, "nft", "list", "table", "inet", "foreign"); !strings.Contains(out, "counter packets") {
		t.Fatalf("foreign table changed:\n%s", out)
	}
}

func TestPolicyLiveStream(t *testing.T) {
	e, hs := newPolicyEnv(t, 2)
	policytest.LiveStream(e, hs[0], hs[1])
	e.RemoveAll()
}

func TestPolicyHoldsNewEndpoints(t *testing.T) {
	e, hs := newPolicyEnv(t, 2)
	policytest.Holds(e, hs[0], hs[1])
	e.RemoveAll()
}

func TestPolicyRestart(t *testing.T) {
	e, hs := newPolicyEnv(t, 2)
	policytest.Restart(e, hs[0], hs[1])
	e.RemoveAll()
}

// qdiscs lists the qdisc kinds of a link in a namespace.
func qdiscs(t *testing.T, ns, dev string) string {
	t.Helper()
	var kinds []string
	for _, l := range strings.Split(strings.TrimSpace(nstest.Exec(t, ns, "tc", "qdisc", "show", "dev", dev)), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			kinds = append(kinds, f[1])
		}
	}
	return strings.Join(kinds, ",")
}

// Profiles with tbf on the veth (into the endpoint) and tbf on an ifb
// (out of it), at the bounds; the shapers come and go with the
// profile, in place.
func TestProfiles(t *testing.T) {
	e, hs := newPolicyEnv(t, 1)
	h := hs[0]
	policytest.Profiles(e, h, 71, policytest.ProfileHooks{
		Shaped: func(key string, shaped bool) {
			got := qdiscs(t, h.ns, core.HostIfName(key))
			_, err := exec.Command("ip", "-n", h.ns, "link", "show", IFBName(h.ns, key)).CombinedOutput()
			if shaped != (strings.Contains(got, "tbf") && strings.Contains(got, "ingress") && err == nil) ||
				(!shaped && (strings.Contains(got, "tbf") || strings.Contains(got, "ingress") || err == nil)) {
				t.Fatalf("shaped=%v wanted; qdiscs of %s: %s; ifb: %v", shaped, core.HostIfName(key), got, err)
			}
		},
		Links: func(key string) []int {
			var idx []int
			on(t, h.ns, func() {
				for _, name := range []string{core.HostIfName(key), IFBName(h.ns, key)} {
					l, err := netlink.LinkByName(name)
					if err != nil {
						t.Fatal(err)
					}
					idx = append(idx, l.Attrs().Index)
				}
			})
			return idx
		},
	}, 0.05, 0.85, 1.10)
	e.RemoveAll()
}

// A table of our name that is not marked as ours, or an invalid policy, is
// refused with one line and changes nothing.
func TestPolicyRefusals(t *testing.T) {
	e, hs := newPolicyEnv(t, 1)
	h := hs[0]
	n := e.Network("a", "vx", 5301, "10.89.3.0/24")
	e.Endpoint("x", "10.89.3.1", n, h, "g")
	e.Group("a", "g", "vx", "p")
	e.Policy("a", "p", policytest.Rule("r", 10, core.DirIn, core.ActionAllow, nil))
	hp := e.Compile(h)
	ruleset := func() string { return nstest.Exec(t, h.ns, "nft", "list", "ruleset") }

	bad := hp
	bad.Endpoints = append([]core.PolicyEndpoint(nil), hp.Endpoints...)
	bad.Endpoints[0].IP = "10.89.3.300"
	before := ruleset()
	on(t, h.ns, func() {
		if _, err := h.drv.SetPolicy(context.Background(), bad); !errors.Is(err, core.ErrInvalid) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("bad policy: %v", err)
		}
	})
	if after := ruleset(); after != before {
		t.Fatalf("a refused policy changed the ruleset:\n%s", after)
	}

	nstest.Exec(t, h.ns, "nft", "add", "table", "bridge", TableName(h.ns))
	before = ruleset()
	other, err := New(testLog(), Config{Host: h.ns, VTEP: h.vtep})
	if err != nil {
		t.Fatal(err)
	}
	on(t, h.ns, func() {
		if _, err := other.SetPolicy(context.Background(), hp); !errors.Is(err, core.ErrInUse) || !strings.Contains(err.Error(), "not netplugin's") {
			t.Fatalf("foreign table of our name: %v", err)
		}
	})
	if after := ruleset(); after != before {
		t.Fatalf("the foreign table was changed:\n%s", after)
	}
	nstest.Exec(t, h.ns, "nft", "delete", "table", "bridge", TableName(h.ns))
}
