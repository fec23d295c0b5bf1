package mgmtfn

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// The handlers run in-process through the real mux against a real embedded
// etcd; only the dataplane and the agent are fakes that record what they were
// asked (what these tests check is the plugin's bookkeeping, not links).

type fakeAgent struct {
	mu    sync.Mutex
	calls int
}

func (a *fakeAgent) Exclusive(ctx context.Context, fn func(context.Context) (int64, error)) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	_, err := fn(ctx)
	return err
}

func (a *fakeAgent) Poke() {}

type fakeDriver struct {
	mu    sync.Mutex
	calls []string
}

func (d *fakeDriver) record(s string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, s)
}

func (d *fakeDriver) Name() string { return "linuxbridge" }
func (d *fakeDriver) EnsureNetwork(_ context.Context, n core.NetworkSpec) error {
	d.record("ensure-net " + n.Key())
	return nil
}
func (d *fakeDriver) RemoveNetwork(_ context.Context, n core.ObservedNetwork) error {
	d.record("remove-net " + n.Key)
	return nil
}
func (d *fakeDriver) EnsureEndpoint(_ context.Context, ep core.EndpointSpec) (core.ObservedEndpoint, error) {
	d.record("ensure-ep " + ep.Key())
	return core.ObservedEndpoint{Key: ep.Key()}, nil
}
func (d *fakeDriver) RemoveEndpoint(_ context.Context, o core.ObservedEndpoint) error {
	d.record("remove-ep " + o.Key)
	return nil
}
func (d *fakeDriver) Observe(context.Context) (core.Actual, error) { return core.Actual{}, nil }
func (d *fakeDriver) PrepareHandOff(_ context.Context, ep core.EndpointSpec) (string, error) {
	d.record("handoff " + ep.Key())
	return core.HandOffIfName(ep.Key()), nil
}

type harness struct {
	t     testing.TB
	p     *Plugin
	h     http.Handler
	store *state.Store
	drv   *fakeDriver
}

const testHost = "h1"

func newHarness(t testing.TB) *harness {
	s, _ := etcdtest.Store(t)
	drv := &fakeDriver{}
	p := New(Config{Name: "np", Host: testHost, Store: s, Drivers: map[string]core.Driver{"linuxbridge": drv},
		Agent: &fakeAgent{}, Log: etcdtest.Log(t)})
	p.base = context.Background()
	return &harness{t: t, p: p, h: p.mux(), store: s, drv: drv}
}

// call posts body to path and returns the status and the decoded answer.
func (h *harness) call(path string, body []byte) (int, map[string]any) {
	rec := httptest.NewRecorder()
	h.h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
	var out map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

// must posts v and fails the test on an error answer.
func (h *harness) must(path string, v any) map[string]any {
	h.t.Helper()
	b, _ := json.Marshal(v)
	code, out := h.call(path, b)
	if code != http.StatusOK {
		h.t.Fatalf("%s %s: %d %v", path, b, code, out)
	}
	return out
}

func dockerID(c byte) string { return strings.Repeat(string(c), 64) }

// createNetwork runs Docker's sequence for `docker network create`:
// RequestPool, the gateway's RequestAddress, CreateNetwork.
func (h *harness) createNetwork(id, tenant, subnet, gw, ipRange string) string {
	h.t.Helper()
	pool := h.must("/IpamDriver.RequestPool", map[string]any{"Pool": subnet, "SubPool": ipRange})["PoolID"].(string)
	h.must("/IpamDriver.RequestAddress", map[string]any{"PoolID": pool, "Address": gw,
		"Options": map[string]string{"RequestAddressType": gatewayRequest}})
	h.createOnly(id, tenant, subnet, gw)
	return pool
}

func (h *harness) createOnly(id, tenant, subnet, gw string) {
	h.t.Helper()
	h.must("/NetworkDriver.CreateNetwork", map[string]any{"NetworkID": id,
		"Options":  map[string]any{"com.docker.network.generic": map[string]any{"tenant": tenant}},
		"IPv4Data": []map[string]any{{"AddressSpace": addressSpace, "Pool": subnet, "Gateway": gw + "/24"}}})
}

// runContainer runs Docker's sequence for one endpoint and returns its address.
func (h *harness) runContainer(netID, epID, pool string) string {
	h.t.Helper()
	addr := h.must("/IpamDriver.RequestAddress", map[string]any{"PoolID": pool})["Address"].(string)
	h.must("/NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID,
		"Interface": map[string]any{"Address": addr}})
	h.must("/NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/var/run/docker/netns/" + epID[:12]})
	return plainIP(addr)
}

// TestPoolsBindToTheirNetworks: two tenants' `docker network create` with one
// subnet on one host, interleaved as Docker may (both pools requested before
// either CreateNetwork): the second RequestPool waits for the first network to
// be bound, and each network's addresses come from its own range and network.
func TestPoolsBindToTheirNetworks(t *testing.T) {
	h := newHarness(t)
	poolA := make(chan string)
	go func() {
		poolA <- h.must("/IpamDriver.RequestPool", map[string]any{"Pool": "10.146.0.0/24", "SubPool": "10.146.0.0/26"})["PoolID"].(string)
	}()
	pa := <-poolA
	poolB := make(chan string)
	go func() {
		poolB <- h.must("/IpamDriver.RequestPool", map[string]any{"Pool": "10.146.0.0/24", "SubPool": "10.146.0.64/26"})["PoolID"].(string)
	}()
	select {
	case pb := <-poolB:
		t.Fatalf("a second pool %s of the subnet while %s is pending", pb, pa)
	case <-time.After(200 * time.Millisecond):
	}
	h.createOnly(dockerID('a'), "ta", "10.146.0.0/24", "10.146.0.1")
	pb := <-poolB
	h.createOnly(dockerID('b'), "tb", "10.146.0.0/24", "10.146.0.1")

	ipA := h.runContainer(dockerID('a'), dockerID('1'), pa)
	ipB := h.runContainer(dockerID('b'), dockerID('2'), pb)
	if ipA != "10.146.0.2" || ipB != "10.146.0.64" {
		t.Fatalf("addresses %s (tenant ta, range .0/26) and %s (tenant tb, range .64/26)", ipA, ipB)
	}
	for _, c := range []struct {
		tenant string
		ep     byte
		ip     string
	}{{"ta", '1', ipA}, {"tb", '2', ipB}} {
		ep, _, err := h.store.GetEndpoint(context.Background(), c.tenant, dockerID(c.ep)[:12])
		if err != nil || ep.IP != c.ip {
			t.Fatalf("tenant %s: endpoint %+v %v", c.tenant, ep, err)
		}
	}
	// A pool released before its network exists (CreateNetwork failed) frees
	// the subnet at once.
	pc := h.must("/IpamDriver.RequestPool", map[string]any{"Pool": "10.146.0.0/24"})["PoolID"].(string)
	h.must("/IpamDriver.ReleasePool", map[string]any{"PoolID": pc})
	done := make(chan struct{})
	go func() {
		h.must("/IpamDriver.RequestPool", map[string]any{"Pool": "10.146.0.0/24"})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RequestPool still waits for a released pool")
	}
}

// TestLegacyPoolID: a network an older version bound (pool ID
// "<subnet>|<range>", no pool in its mapping) keeps getting addresses.
func TestLegacyPoolID(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	n, err := h.store.Docker().Bind(ctx, state.DockerNetwork{Host: testHost, ID: dockerID('c')},
		core.Network{Tenant: "old", Subnet: "10.147.0.0/24", Gateway: "10.147.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ip := h.runContainer(dockerID('c'), dockerID('3'), "10.147.0.0/24|10.147.0.128/25")
	if ip != "10.147.0.128" {
		t.Fatalf("legacy pool: %s", ip)
	}
	if ep, _, err := h.store.GetEndpoint(ctx, "old", dockerID('3')[:12]); err != nil || ep.Network != n.Name || ep.IP != ip {
		t.Fatalf("%+v %v", ep, err)
	}
}

// TestPendingPoolNotStolen: while a pool waits for its CreateNetwork, a second
// network of the subnet is refused after a while (not given the subnet: the
// first one's late CreateNetwork would bind the second's pool), and the first
// still binds its own pool.
func TestPendingPoolNotStolen(t *testing.T) {
	h := newHarness(t)
	h.p.cfg.Timeout = time.Second // RequestPool waits half of it
	pa := h.must("/IpamDriver.RequestPool", map[string]any{"Pool": "10.157.0.0/24"})["PoolID"].(string)
	b, _ := json.Marshal(map[string]any{"Pool": "10.157.0.0/24"})
	start := time.Now()
	code, out := h.call("/IpamDriver.RequestPool", b)
	if code == http.StatusOK || !strings.Contains(out["Err"].(string), "in progress") {
		t.Fatalf("second pool of a pending subnet: %d %v", code, out)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("refused after %v, without waiting for the first CreateNetwork", d)
	}
	h.createOnly(dockerID('a'), "ta", "10.157.0.0/24", "10.157.0.1")
	if ip := h.runContainer(dockerID('a'), dockerID('1'), pa); ip != "10.157.0.2" {
		t.Fatalf("first network's address: %s", ip)
	}
}
