package mgmtfn

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// The fuzz targets post arbitrary bytes as the body of each route, through the
// real mux, against a real embedded etcd holding a small baseline (a bound
// Docker network with a joined endpoint, so that bodies naming them reach past
// the lookups). Every answer must be well-formed; a rejected request must
// leave the store exactly as it was. After an accepted one the baseline is put
// back, so that every input starts from the same store.

var networkRoutes = []string{
	"/Plugin.Activate",
	"/NetworkDriver.GetCapabilities",
	"/NetworkDriver.CreateNetwork",
	"/NetworkDriver.DeleteNetwork",
	"/NetworkDriver.CreateEndpoint",
	"/NetworkDriver.DeleteEndpoint",
	"/NetworkDriver.EndpointOperInfo",
	"/NetworkDriver.Join",
	"/NetworkDriver.Leave",
	"/NetworkDriver.AllocateNetwork",
	"/NetworkDriver.FreeNetwork",
	"/NetworkDriver.DiscoverNew",
	"/NetworkDriver.DiscoverDelete",
	"/NetworkDriver.ProgramExternalConnectivity",
	"/NetworkDriver.RevokeExternalConnectivity",
}

var ipamRoutes = []string{
	"/IpamDriver.GetCapabilities",
	"/IpamDriver.GetDefaultAddressSpaces",
	"/IpamDriver.RequestPool",
	"/IpamDriver.ReleasePool",
	"/IpamDriver.RequestAddress",
	"/IpamDriver.ReleaseAddress",
}

// The baseline's names, which the seed corpus uses.
const (
	fuzzTenant = "fz"
	fuzzPool   = "netplugin|0123456789abcdef|10.150.0.0/24|"
)

var (
	fuzzNet = dockerID('a')
	fuzzEP  = dockerID('e')
)

type fuzzEnv struct {
	*harness
	baseline []*mvccpb.KeyValue
	dump     string
}

func newFuzzEnv(f *testing.F) *fuzzEnv {
	h := newHarness(f)
	h.p.cfg.Timeout = 2 * time.Second // a RequestPool waiting on a pending one gives up in 1 s
	ctx := context.Background()
	n, err := h.store.Docker().Bind(ctx, state.DockerNetwork{Host: testHost, ID: fuzzNet, PoolID: fuzzPool},
		core.Network{Tenant: fuzzTenant, Subnet: "10.150.0.0/24", Gateway: "10.150.0.1"})
	if err != nil {
		f.Fatal(err)
	}
	ip, owner, err := h.store.Docker().ReserveIP(ctx, n.Tenant, n.Name, "", 0, 0, testHost)
	if err != nil {
		f.Fatal(err)
	}
	ep, err := h.store.Docker().CreateEndpoint(ctx, core.Endpoint{Tenant: n.Tenant, Network: n.Name, Name: fuzzEP[:12], IP: ip,
		Host: testHost, DockerEndpoint: fuzzEP}, owner)
	if err != nil {
		f.Fatal(err)
	}
	_, rev, err := h.store.GetEndpoint(ctx, ep.Tenant, ep.Name)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := h.store.Docker().AttachNetNS(ctx, ep, rev, "/var/run/docker/netns/fuzz"); err != nil {
		f.Fatal(err)
	}
	r, err := h.store.Client().Get(ctx, state.Prefix, clientv3.WithPrefix())
	if err != nil {
		f.Fatal(err)
	}
	return &fuzzEnv{harness: h, baseline: r.Kvs, dump: etcdtest.Dump(f, h.store)}
}

// restore puts the baseline back, and forgets what the plugin holds in memory.
func (e *fuzzEnv) restore(t *testing.T) {
	ctx := context.Background()
	if _, err := e.store.Client().Delete(ctx, state.Prefix, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	var ops []clientv3.Op
	for _, kv := range e.baseline {
		ops = append(ops, clientv3.OpPut(string(kv.Key), string(kv.Value)))
	}
	if _, err := e.store.Client().Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	e.p.mu.Lock()
	e.p.pools, e.p.released, e.p.suspect = map[string]*pendingPool{}, map[string]time.Time{}, map[string]int{}
	e.p.mu.Unlock()
}

func (e *fuzzEnv) check(t *testing.T, routes []string, route uint8, body []byte) {
	path := routes[int(route)%len(routes)]
	code, out := e.call(path, body)
	switch code {
	case http.StatusOK:
		if path == "/NetworkDriver.EndpointOperInfo" {
			if _, ok := out["Value"]; !ok {
				t.Fatalf("%s %q: answer without Value: %v", path, body, out)
			}
		}
	case http.StatusInternalServerError:
		msg, _ := out["Err"].(string)
		if msg == "" || strings.Contains(msg, "\n") {
			t.Fatalf("%s %q: error answer %v", path, body, out)
		}
		if path == "/NetworkDriver.EndpointOperInfo" {
			t.Fatalf("EndpointOperInfo failed (Docker would fail the container start): %q %v", body, out)
		}
		if d := etcdtest.Dump(t, e.store); d != e.dump {
			t.Fatalf("%s %q was rejected (%s) but changed the store:\n%s\nwant:\n%s", path, body, msg, d, e.dump)
		}
		return
	default:
		t.Fatalf("%s %q: status %d", path, body, code)
	}
	e.restore(t) // accepted: the store or the plugin's memory (pending pools) may have changed
}

func FuzzNetworkDriver(f *testing.F) {
	e := newFuzzEnv(f)
	seed(f, networkRoutes)
	f.Fuzz(func(t *testing.T, route uint8, body []byte) { e.check(t, networkRoutes, route, body) })
}

func FuzzIpamDriver(f *testing.F) {
	e := newFuzzEnv(f)
	seed(f, ipamRoutes)
	f.Fuzz(func(t *testing.T, route uint8, body []byte) { e.check(t, ipamRoutes, route, body) })
}

// seed adds Docker's own request shapes for each route (the committed corpus
// in testdata/fuzz holds more).
func seed(f *testing.F, routes []string) {
	bodies := map[string][]any{
		"/NetworkDriver.CreateNetwork": {map[string]any{"NetworkID": dockerID('b'),
			"Options":  map[string]any{"com.docker.network.enable_ipv6": false, "com.docker.network.generic": map[string]any{"tenant": fuzzTenant}},
			"IPv4Data": []map[string]any{{"AddressSpace": addressSpace, "Pool": "10.150.0.0/24", "Gateway": "10.150.0.1/24"}}}},
		"/NetworkDriver.DeleteNetwork":    {map[string]any{"NetworkID": fuzzNet}},
		"/NetworkDriver.CreateEndpoint":   {map[string]any{"NetworkID": fuzzNet, "EndpointID": dockerID('f'), "Interface": map[string]any{"Address": "10.150.0.9/24"}}},
		"/NetworkDriver.DeleteEndpoint":   {map[string]any{"NetworkID": fuzzNet, "EndpointID": fuzzEP}},
		"/NetworkDriver.EndpointOperInfo": {map[string]any{"NetworkID": fuzzNet, "EndpointID": fuzzEP}},
		"/NetworkDriver.Join":             {map[string]any{"NetworkID": fuzzNet, "EndpointID": fuzzEP, "SandboxKey": "/var/run/docker/netns/x"}},
		"/NetworkDriver.Leave":            {map[string]any{"NetworkID": fuzzNet, "EndpointID": fuzzEP}},
		"/IpamDriver.RequestPool":         {map[string]any{"AddressSpace": addressSpace, "Pool": "10.152.0.0/16", "SubPool": "10.152.3.0/24"}},
		"/IpamDriver.ReleasePool":         {map[string]any{"PoolID": fuzzPool}},
		"/IpamDriver.RequestAddress": {map[string]any{"PoolID": fuzzPool, "Address": ""},
			map[string]any{"PoolID": fuzzPool, "Address": "10.150.0.1", "Options": map[string]string{"RequestAddressType": gatewayRequest}}},
		"/IpamDriver.ReleaseAddress": {map[string]any{"PoolID": fuzzPool, "Address": "10.150.0.2"}},
	}
	for i, r := range routes {
		f.Add(uint8(i), []byte(nil))
		for _, b := range bodies[r] {
			j, _ := json.Marshal(b)
			f.Add(uint8(i), j)
		}
	}
}
