package ovs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/policytest"
)

// polHost is a simulated OVS host for the shared policy scenarios. Its
// ovs-ofctl is wrapped to log every run, so that a test can tell whether
// the flows were written.
type polHost struct {
	*host
	log string
}

var _ policytest.Host = polHost{}

func (h polHost) Name() string { return h.cfg.Host }
func (h polHost) VTEP() string { return h.cfg.VTEP }

func (h polHost) Ensure(t *testing.T, nets []core.NetworkSpec, eps []core.EndpointSpec) {
	t.Helper()
	mustEnsureNets(t, h.drv, nets...)
	if len(eps) == 0 {
		return
	}
	mustEnsureEPs(t, h.drv, eps...)
	var keys []string
	for _, e := range eps {
		keys = append(keys, e.Key())
	}
	waitHealthy(t, h.drv, keys...)
}

func (h polHost) SetRemotes(t *testing.T, r map[string]core.NetRemotes) {
	t.Helper()
	mustSetRemotes(t, h.drv, r)
}

func (h polHost) SetPolicy(t *testing.T, p core.HostPolicy) int64 {
	t.Helper()
	gen, err := h.drv.SetPolicy(testCtx(t), p)
	if err != nil {
		t.Fatalf("%s: SetPolicy: %v", h.Name(), err)
	}
	return gen
}

func (h polHost) Restart(t *testing.T, want core.Desired) int64 {
	t.Helper()
	d := h.newDriver(t)
	gen, err := d.AppliedPolicy(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	act, err := d.Observe(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if plan := core.Reconcile(want, act); !plan.Empty() {
		t.Fatalf("%s: a restarted agent would change %+v", h.Name(), plan)
	}
	h.drv = d
	return gen
}

// Written counts the bundles of flows written so far.
func (h polHost) Written(t *testing.T) string {
	b, _ := os.ReadFile(h.log)
	return fmt.Sprint(strings.Count(string(b), "add-flows"))
}

func (h polHost) Remove(t *testing.T, nets []core.NetworkSpec, eps []core.EndpointSpec) {
	t.Helper()
	removeAll(t, h.drv, eps, nets)
}

// Leaks lists our ports, bridges, links and policy flows.
func (h polHost) Leaks(t *testing.T) []string {
	var left []string
	if out := h.vsctl(t, "--columns=name", "find", "Port", "external_ids:"+extOwner+"="+ownerValue); out != "" {
		left = append(left, "ports: "+out)
	}
	if out := h.vsctl(t, "list-br"); strings.Contains(out, h.drv.cfg.Bridge) {
		left = append(left, "bridge "+h.drv.cfg.Bridge)
		if flows := policyFlows(t, h.host); len(flows) > 0 {
			left = append(left, fmt.Sprintf("%d policy flows", len(flows)))
		}
	}
	// vswitchd drops the bridges' tap devices a moment after the bridges.
	for i := 0; i < 50 && len(hostLinks(t, h.ns)) > 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	left = append(left, hostLinks(t, h.ns)...)
	return left
}

// policyFlows returns the integration bridge's flows with our policy cookie.
func policyFlows(t *testing.T, h *host) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(h.ofctl(t, "dump-flows", "unix:"+h.inst.Dir+"/np-int.mgmt"), "\n") {
		if strings.Contains(l, "cookie="+PolicyCookie(h.cfg.Host)) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

// loggingOfctl wraps ovs-ofctl in a script that logs its arguments to log.
func loggingOfctl(t *testing.T) (path, log string) {
	t.Helper()
	real, err := findBinary("ovs-ofctl")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	log = filepath.Join(dir, "runs")
	path = filepath.Join(dir, "ovs-ofctl")
	script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\nexec %s \"$@\"\n", log, real)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, log
}

// newPolicyEnv makes two OVS hosts joined by VXLAN (vxlanPair) labelled
// with their namespaces, with transmit checksums done by the kernel on
// the underlay, as the userspace datapath needs for TCP and UDP.
func newPolicyEnv(t *testing.T) (*policytest.Env, []polHost) {
	nstest.RequireRoot(t)
	ha, hb := vxlanPair(t)
	var hs []polHost
	var ph []policytest.Host
	for _, h := range []*host{ha, hb} {
		ofctl, log := loggingOfctl(t)
		h.cfg.Host, h.cfg.Ofctl = h.ns, ofctl
		h.drv = h.newDriver(t)
		for _, dev := range []string{"br-phy", "ul0"} {
			h.sh(t, "ethtool", "-K", dev, "tx", "off")
		}
		t.Cleanup(func() {
			if t.Failed() && os.Getenv("NP_DUMP") != "" {
				t.Logf("%s ports:\n%s", h.ns, h.vsctl(t, "--columns=name,ofport,ofport_request,external_ids", "list", "Interface"))
				t.Logf("%s flows:\n%s", h.ns, h.ofctl(t, "dump-flows", "unix:"+h.inst.Dir+"/np-int.mgmt"))
			}
		})
		hs = append(hs, polHost{h, log})
		ph = append(ph, polHost{h, log})
	}
	return policytest.New(t, nstest.Prefix(), Name, ph...), hs
}

func TestPolicyMatrix(t *testing.T) {
	e, hs := newPolicyEnv(t)
	policytest.Matrix(e, hs[0], hs[1])
	e.RemoveAll()
}

func TestPolicyLiveStream(t *testing.T) {
	e, hs := newPolicyEnv(t)
	policytest.LiveStream(e, hs[0], hs[1])
	e.RemoveAll()
}

func TestPolicyHoldsNewEndpoints(t *testing.T) {
	e, hs := newPolicyEnv(t)
	policytest.Holds(e, hs[0], hs[1])
	e.RemoveAll()
}

func TestPolicyRestart(t *testing.T) {
	e, hs := newPolicyEnv(t)
	policytest.Restart(e, hs[0], hs[1])
	e.RemoveAll()
}

// Bad input and foreign flows: an invalid policy is refused whole and
// changes no flow; flows of another cookie are never touched.
func TestPolicyRefusals(t *testing.T) {
	e, hs := newPolicyEnv(t)
	h := hs[0]
	n := e.Network("a", "vx", 5301, "10.89.3.0/24")
	e.Endpoint("x", "10.89.3.1", n, h, "g")
	e.Group("a", "g", "vx", "p")
	e.Policy("a", "p", policytest.Rule("r", 10, core.DirIn, core.ActionAllow, nil))
	e.Apply(1)
	e.Plug("x")
	mgmt := "unix:" + h.inst.Dir + "/np-int.mgmt"
	h.ofctl(t, "add-flow", mgmt, "cookie=0x1234,table=7,priority=5,actions=drop")
	dump := func() string { return h.ofctl(t, "dump-flows", "--no-stats", mgmt) }
	before := dump()
	bad := e.Compile(h)
	bad.Endpoints[0].MAC = "zz"
	if _, err := h.drv.SetPolicy(testCtx(t), bad); !errors.Is(err, core.ErrInvalid) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("bad policy: %v", err)
	}
	if after := dump(); after != before {
		t.Fatalf("a refused policy changed the flows:\n%s", after)
	}
	e.RemoveAll()
}

// Profiles with tbf on the port's host end (into the endpoint) and on its
// container end (out of it), and a DSCP set_field.
func TestProfiles(t *testing.T) {
	e, hs := newPolicyEnv(t)
	h := hs[0]
	policytest.Profiles(e, h, 71, policytest.ProfileHooks{
		Shaped: func(key string, shaped bool) {
			host := h.sh(t, "tc", "qdisc", "show", "dev", core.HostIfName(key))
			var ctr string
			for _, name := range e.Order {
				if ep := e.EPs[name]; ep.Key() == key {
					ctr = nstest.Exec(t, e.P+name, "tc", "qdisc", "show", "dev", "eth0")
				}
			}
			ours := func(out string) bool { return strings.Contains(out, "qdisc tbf 6e70: root") }
			if ours(host) != shaped || ours(ctr) != shaped {
				t.Fatalf("shaped=%v wanted; host end:\n%s\ncontainer end:\n%s", shaped, host, ctr)
			}
		},
		Links: func(key string) []int {
			n, err := strconv.Atoi(strings.TrimSpace(h.sh(t, "cat", "/sys/class/net/"+core.HostIfName(key)+"/ifindex")))
			if err != nil {
				t.Fatal(err)
			}
			return []int{n, h.ofport(t, core.HostIfName(key))}
		},
	}, 0.05, 0.85, 1.10)
	e.RemoveAll()
}
