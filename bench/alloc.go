package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// alloc measures IP allocation through the store API (what netdcli, -cfg and
// the Docker IPAM call) against Debian's etcd in its own process: whether the
// cost of one create stays flat as the network fills, and whether concurrent
// creators on separate clients ever share or lose an address.
func (b *bench) alloc(ctx context.Context) ([]Result, error) {
	e, err := startEtcdProc(ctx, b.prefix+"alloc")
	if err != nil {
		return nil, err
	}
	defer e.stop()
	s, err := state.Connect(ctx, []string{e.url}, 10*time.Second, b.log)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var res []Result

	// The floor: one read and one compare-and-create transaction, the round
	// trips no allocation can avoid. It is measured next to every create, so
	// that the machine's load (other work on its two cores) shows in it too.
	floorOp := func(i int) (time.Duration, error) {
		k := fmt.Sprintf("/bench/floor/%d", i)
		t0 := time.Now()
		if _, err := s.Client().Get(ctx, k); err != nil {
			return 0, err
		}
		if _, err := s.Client().Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, "x"), clientv3.OpPut(k+"/b", "y")).Commit(); err != nil {
			return 0, err
		}
		return time.Since(t0), nil
	}

	n := b.allocN
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "flat", Subnet: "10.64.0.0/18"}); err != nil {
		return res, err
	}
	took := make([]time.Duration, n)
	floors := make([]time.Duration, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "flat", Name: fmt.Sprintf("f%d", i), Host: fmt.Sprintf("h%d", i%50)}, 0); err != nil {
			return res, fmt.Errorf("create endpoint %d: %w", i, err)
		}
		took[i] = time.Since(t0)
		if floors[i], err = floorOp(i); err != nil {
			return res, err
		}
	}
	window := min(1000, n/2)
	first, last := meanDur(took[:window]), meanDur(took[n-window:])
	ratio := float64(last) / float64(first)
	ff, fl := meanDur(floors[:window]), meanDur(floors[n-window:])
	var trend []string
	for w := 0; w+window <= n; w += window {
		trend = append(trend, fmt.Sprintf("%.2f", ms(meanDur(took[w:w+window]))))
	}
	res = append(res, Result{Name: "alloc_flat", Value: ratio, Unit: "ratio", Target: "<= 1.2", Pass: boolp(ratio <= 1.2),
		Note: fmt.Sprintf("%d endpoints one by one in one /18: mean create %.2f ms of the first %d, %.2f ms of the last %d (per %d: %s ms); "+
			"the floor (get + txn) next to them %.2f and %.2f ms, so %.2f against the floor",
			n, ms(first), window, ms(last), window, window, strings.Join(trend, " "), ms(ff), ms(fl), (float64(last)/float64(fl))/(float64(first)/float64(ff)))})
	res = append(res, Result{Name: "alloc_create", Value: ms(last), Unit: "ms", Note: fmt.Sprintf("mean create of the last %d; the floor %.2f ms", window, ms(fl))})

	// Concurrent creators, each on its own client as separate processes are.
	const workers = 8
	each := n / 10
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "conc", Subnet: "10.65.0.0/18"}); err != nil {
		return res, err
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := state.Connect(ctx, []string{e.url}, 10*time.Second, b.log)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for i := 0; i < each; i++ {
				if _, err := c.CreateEndpoint(ctx, core.Endpoint{Network: "conc", Name: fmt.Sprintf("c%d-%d", w, i), Host: fmt.Sprintf("h%d", w)}, 0); err != nil {
					errs <- fmt.Errorf("creator %d, endpoint %d: %w", w, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		return res, err
	}
	eps, err := s.Endpoints(ctx, core.DefaultTenant, "conc")
	if err != nil {
		return res, err
	}
	ips := map[string]bool{}
	for _, ep := range eps {
		ips[ep.IP] = true
	}
	keys, err := s.Client().Get(ctx, state.Prefix+"alloc/ip/default/conc/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return res, err
	}
	want := workers * each
	ok := len(eps) == want && len(ips) == want && keys.Count == int64(want)
	rate := float64(want) / elapsed.Seconds()
	res = append(res, Result{Name: "alloc_concurrent", Value: rate, Unit: "creates/s", Target: fmt.Sprintf("%d distinct IPs, none lost", want), Pass: boolp(ok),
		Note: fmt.Sprintf("%d creators x %d on separate clients: %d endpoints, %d distinct IPs, %d allocation keys", workers, each, len(eps), len(ips), keys.Count)})
	return res, nil
}

func meanDur(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(max(1, len(d)))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
