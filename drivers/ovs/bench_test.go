package ovs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
	"github.com/netplugin/netplugin/internal/nstest"
)

// TestBenchAttach measures, once, 500 EnsureEndpoint calls from 4 workers
// against 500 "ovs-vsctl add-port ... tag=N" calls on a fresh OVS of its own.
// It logs the numbers and asserts nothing about them (machines differ); run
// it with NETPLUGIN_OVS_BENCH=1 go test -run BenchAttach -v ./drivers/ovs/.
func TestBenchAttach(t *testing.T) {
	if os.Getenv("NETPLUGIN_OVS_BENCH") == "" {
		t.Skip("set NETPLUGIN_OVS_BENCH=1 to measure attach speed")
	}
	const n, workers, namespaces = 500, 4, 10
	p := nstest.Prefix()

	// Baseline: one ovs-vsctl per port, veths made beforehand (not timed).
	base := newHost(t, nil)
	base.vsctl(t, "add-br", "br-base", "--", "set", "Bridge", "br-base", "datapath_type=netdev")
	var batch strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&batch, "link add bv%d type veth peer name bp%d\nlink set bv%d up\n", i, i, i)
	}
	ipBatch := exec.Command("ip", "-n", base.ns, "-batch", "-")
	ipBatch.Stdin = strings.NewReader(batch.String())
	if out, err := ipBatch.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch: %v: %s", err, out)
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, err := base.inst.TryVsctl("add-port", "br-base", fmt.Sprintf("bv%d", i), "tag=10"); err != nil {
			t.Fatalf("add-port %d: %v", i, err)
		}
	}
	vsctl := time.Since(start)
	t.Logf("ovs-vsctl add-port x%d (veths premade): %v (%v per port)", n, vsctl.Round(time.Millisecond), (vsctl / n).Round(10*time.Microsecond))

	h := newHost(t, nil)
	d := h.drv
	nw := network(p, "bench", core.EncapVLAN, 10, "10.90.0.0/16")
	mustEnsureNets(t, d, nw)
	var nss []string
	for i := 0; i < namespaces; i++ {
		nss = append(nss, nstest.Path(nstest.NS(t, fmt.Sprintf("%sc%d", p, i))))
	}
	eps := make([]core.EndpointSpec, n)
	keys := make([]string, n)
	for i := range eps {
		path := nss[i%len(nss)] // round robin: workers rarely share a namespace
		eps[i] = core.EndpointSpec{
			Endpoint: core.Endpoint{Tenant: p, Network: nw.Name, Name: fmt.Sprintf("e%d", i),
				IP: fmt.Sprintf("10.90.%d.%d", i/200, i%200+1), MAC: fmt.Sprintf("02:42:0a:5a:%02x:%02x", i/256, i%256)},
			Net: nw, NetNSPath: path, NetNSID: nsID(t, path),
		}
		keys[i] = eps[i].Key()
	}
	ensureAll := func() (returned, attached time.Duration) {
		start := time.Now()
		parallelDo(t, workers, eps, func(ctx context.Context, e core.EndpointSpec) error {
			_, err := d.EnsureEndpoint(ctx, e)
			return err
		})
		returned = time.Since(start)
		waitAttached(t, d, n, start)
		return returned, time.Since(start)
	}

	// 1. Everything: veth in the container's namespace, its config, the port.
	returned, attached := ensureAll()
	t.Logf("driver EnsureEndpoint x%d, %d workers (veth+netns config+port): returned in %v, all attached (ofport) in %v; speed-up %.1fx / %.1fx",
		n, workers, returned.Round(time.Millisecond), attached.Round(time.Millisecond),
		float64(vsctl)/float64(returned), float64(vsctl)/float64(attached))
	waitHealthy(t, d, keys...)
	nstest.MustPing(t, strings.TrimPrefix(nss[0], "/var/run/netns/"), "10.90.2.100")

	// 2. The OVSDB side alone, like the baseline: the veths stay, the ports
	// are deleted by hand, and Ensure puts them back (its repair path).
	args := []string{"del-port", "np-int", core.HostIfName(keys[0])}
	for _, k := range keys[1:] {
		args = append(args, "--", "del-port", "np-int", core.HostIfName(k))
	}
	h.vsctl(t, args...)
	returned, attached = ensureAll()
	t.Logf("driver EnsureEndpoint x%d, %d workers (veths kept, ports only): returned in %v, all attached (ofport) in %v; speed-up %.1fx / %.1fx",
		n, workers, returned.Round(time.Millisecond), attached.Round(time.Millisecond),
		float64(vsctl)/float64(returned), float64(vsctl)/float64(attached))

	start = time.Now()
	parallelDo(t, workers, keys, func(ctx context.Context, k string) error {
		return d.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: k})
	})
	t.Logf("driver RemoveEndpoint x%d, %d workers: %v", n, workers, time.Since(start).Round(time.Millisecond))
	removeAll(t, d, nil, []core.NetworkSpec{nw})
	assertClean(t, h)
}

// parallelDo runs f over items with the given number of workers, as the agent
// does, and fails the test on the first error.
func parallelDo[T any](t *testing.T, workers int, items []T, f func(context.Context, T) error) {
	t.Helper()
	work := make(chan T)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				if err := f(testCtx(t), it); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
}

// waitAttached polls, gently, until vswitchd has given all n endpoint ports an
// ofport: a full Observe every few milliseconds would steal CPU from the
// vswitchd being measured.
func waitAttached(t *testing.T, d *Driver, n int, start time.Time) {
	t.Helper()
	epMark := ovsdb.Map{extOwner: ownerValue, extRole: roleEndpoint}
	for {
		res, err := d.tx(testCtx(t), true, ovsdb.Select("Interface", []ovsdb.Condition{
			ovsdb.Includes("external_ids", epMark), ovsdb.Cond("ofport", ">", 0)}, "_uuid"))
		if err != nil {
			t.Fatal(err)
		}
		if len(res[0].Rows) == n {
			return
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("only %d of %d ports attached after a minute", len(res[0].Rows), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
