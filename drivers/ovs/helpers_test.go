package ovs

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/ovstest"
)

// Every test "host" is a network namespace running its own ovsdb-server and
// ovs-vswitchd (userspace datapath), with a Driver told to work in it through
// Config.HostNetNS. Containers are further namespaces made with ip netns.

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testLog discards output after the test: a late log line from a goroutine
// must not hit a finished test's t.Log.
func testLog(t *testing.T) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	if testing.Verbose() {
		l.SetOutput(&tWriter{t: t})
		t.Cleanup(func() { l.SetOutput(io.Discard) })
	}
	l.SetLevel(logrus.DebugLevel)
	return logrus.NewEntry(l)
}

type tWriter struct {
	mu sync.Mutex
	t  *testing.T
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// host is one simulated machine.
type host struct {
	ns   string // netns name
	inst *ovstest.Instance
	cfg  Config
	drv  *Driver
}

func newHost(t *testing.T, mod func(*Config)) *host {
	t.Helper()
	nstest.RequireRoot(t)
	ns := ovstest.NewNetns(t)
	inst := ovstest.Start(t, ovstest.WithVswitchd(), ovstest.InNetns(ns))
	h := &host{ns: ns, inst: inst, cfg: Config{
		OVSDB: inst.Addr(), RunDir: inst.Dir, DatapathType: "netdev", HostNetNS: nstest.Path(ns),
	}}
	if mod != nil {
		mod(&h.cfg)
	}
	h.drv = h.newDriver(t)
	return h
}

// newDriver starts another Driver on the host's OVS, as a restarted agent would.
func (h *host) newDriver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(testCtx(t), h.cfg, testLog(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// sh runs a command inside the host namespace.
func (h *host) sh(t *testing.T, args ...string) string {
	t.Helper()
	return nstest.Exec(t, h.ns, args...)
}

func (h *host) vsctl(t *testing.T, args ...string) string {
	t.Helper()
	return h.inst.Vsctl(t, args...)
}

func (h *host) ofctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.inst.Command(testCtx(t), "ovs-ofctl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ovs-ofctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (h *host) ofport(t *testing.T, port string) int {
	t.Helper()
	n, err := strconv.Atoi(h.vsctl(t, "get", "Interface", port, "ofport"))
	if err != nil {
		t.Fatalf("ofport of %s: %v", port, err)
	}
	return n
}

// waitHealthy waits until Observe reports every key healthy (vswitchd attaches
// ports asynchronously after the commit).
func waitHealthy(t *testing.T, d *Driver, keys ...string) core.Actual {
	t.Helper()
	var a core.Actual
	var err error
	for i := 0; i < 200; i++ {
		a, err = d.Observe(testCtx(t))
		ok := err == nil
		for _, k := range keys {
			ok = ok && a.Endpoints[k].Healthy
		}
		if ok {
			return a
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("endpoints %v not healthy: %v %+v", keys, err, a.Endpoints)
	return a
}

func nsID(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func network(tenant, name, encap string, tag int, subnet string) core.NetworkSpec {
	return core.NetworkSpec{Network: core.Network{Tenant: tenant, Name: name, Driver: Name, Encap: encap, Tag: tag, Subnet: subnet}}
}

// endpoint makes a container namespace named prefix+name and the spec of an
// endpoint in it; mac's last byte is n.
func endpoint(t *testing.T, prefix, name, ip string, n core.NetworkSpec, last int) core.EndpointSpec {
	t.Helper()
	ns := nstest.NS(t, prefix+name)
	return core.EndpointSpec{
		Endpoint:  core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: name, IP: ip, MAC: fmt.Sprintf("02:42:0a:4e:00:%02x", last)},
		Net:       n,
		NetNSPath: nstest.Path(ns), NetNSID: nsID(t, nstest.Path(ns)),
	}
}

func mustEnsureNets(t *testing.T, d *Driver, nets ...core.NetworkSpec) {
	t.Helper()
	for _, n := range nets {
		if err := d.EnsureNetwork(testCtx(t), n); err != nil {
			t.Fatalf("EnsureNetwork %s: %v", n.Key(), err)
		}
	}
}

// mustEnsureEPs plugs the endpoints concurrently, as the agent's workers do.
func mustEnsureEPs(t *testing.T, d *Driver, eps ...core.EndpointSpec) map[string]core.ObservedEndpoint {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]core.ObservedEndpoint{}
	errs := map[string]error{}
	for _, e := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := d.EnsureEndpoint(testCtx(t), e)
			mu.Lock()
			defer mu.Unlock()
			out[e.Key()], errs[e.Key()] = o, err
		}()
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			t.Fatalf("EnsureEndpoint %s: %v", k, err)
		}
	}
	return out
}

// hostLinks lists the links of a namespace whose name starts with "np".
func hostLinks(t *testing.T, ns string) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if strings.HasPrefix(name, core.LinkPrefix) {
				names = append(names, name)
			}
		}
	}
	return names
}

// assertClean checks that no netplugin bridge, port or link is left on h.
func assertClean(t *testing.T, h *host) {
	t.Helper()
	if out := h.vsctl(t, "--columns=name", "find", "Port", "external_ids:"+extOwner+"="+ownerValue); out != "" {
		t.Errorf("netplugin ports left:\n%s", out)
	}
	if out := h.vsctl(t, "list-br"); strings.Contains(out, h.drv.cfg.Bridge) || strings.Contains(out, h.drv.cfg.TunnelBridge) {
		t.Errorf("bridges left: %s", out)
	}
	// Allow vswitchd a moment to drop the bridges' tap devices.
	for i := 0; i < 50 && len(hostLinks(t, h.ns)) > 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if l := hostLinks(t, h.ns); len(l) > 0 {
		t.Errorf("links left in %s: %v", h.ns, l)
	}
}

func removeAll(t *testing.T, d *Driver, eps []core.EndpointSpec, nets []core.NetworkSpec) {
	t.Helper()
	ctx := testCtx(t)
	for i := 0; i < 2; i++ { // the second round must be a no-op
		for _, e := range eps {
			if err := d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: e.Key()}); err != nil {
				t.Fatalf("RemoveEndpoint %s (round %d): %v", e.Key(), i, err)
			}
		}
		for _, n := range nets {
			if err := d.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
				t.Fatalf("RemoveNetwork %s (round %d): %v", n.Key(), i, err)
			}
		}
	}
}
