package main

import (
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDockerTwoTenantsOneSubnet: two tenants' Docker networks with the same
// subnet on one host, created at the same moment, each with its own
// --ip-range. Docker's IPAM calls name only the pool, so the pool must stand
// for one network: every container gets its address in its own tenant's
// network and range, and the networks are isolated.
func TestDockerTwoTenantsOneSubnet(t *testing.T) {
	e := newPluginEnv(t)
	const subnet = "10.145.0.0/24"
	ranges := map[string]string{"a": "10.145.0.0/26", "b": "10.145.0.64/26"}
	for round := 0; round < 3; round++ {
		nets := map[string]string{}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []string
		for _, side := range []string{"a", "b"} {
			name := fmt.Sprintf("%s-%s%d", e.name, side, round)
			nets[side] = name
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := e.dk.CLI(t, "network", "create", "-d", e.name, "--ipam-driver", e.name, "--subnet", subnet,
					"--gateway", "10.145.0.1", "--ip-range", ranges[side], "-o", "tenant="+e.name+side, name)
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Sprintf("%v %s", err, out))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		for _, n := range nets {
			t.Cleanup(func() { _, _ = e.dk.CLI(t, "network", "rm", n) })
		}
		if len(errs) > 0 {
			t.Fatalf("round %d: docker network create at once: %s", round, strings.Join(errs, "; "))
		}

		ips := map[string]string{}
		var cs []string
		want := map[string][]string{}
		for _, side := range []string{"a", "b"} {
			_, rng, _ := net.ParseCIDR(ranges[side])
			for i := 1; i <= 2; i++ {
				c := fmt.Sprintf("%s-%s%d-%d", e.name, side, round, i)
				e.run(c, nets[side])
				cs = append(cs, c)
				ip := e.ipOf(c, nets[side])
				if !rng.Contains(net.ParseIP(ip)) {
					t.Fatalf("round %d: %s on %s got %s, outside its --ip-range %s", round, c, nets[side], ip, ranges[side])
				}
				ips[c] = ip
				want[side] = append(want[side], "/netplugin/v1/alloc/ip/"+e.name+side+"/"+nets[side]+"/"+ip)
			}
		}
		// The addresses live in the tenant's own network, and only there.
		for _, side := range []string{"a", "b"} {
			want := want[side]
			sort.Strings(want)
			deadline := time.Now().Add(10 * time.Second)
			for {
				got := e.allocatedIn(e.name + side)
				if strings.Join(got, ",") == strings.Join(want, ",") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("round %d: tenant %s holds\n%s\nwant\n%s", round, e.name+side, strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		a1, a2 := cs[0], cs[1]
		b1, b2 := cs[2], cs[3]
		// Each network works on its own; what follows is isolation.
		if !e.ping(a1, ips[a2]) || !e.ping(b1, ips[b2]) {
			t.Fatalf("round %d: containers of one tenant's network cannot ping each other", round)
		}
		for _, c := range [][2]string{{a1, b1}, {b2, a2}} {
			if _, err := e.docker("exec", c[0], "ping", "-c1", "-W1", ips[c[1]]); err == nil {
				t.Fatalf("round %d: %s reaches %s of the other tenant", round, c[0], ips[c[1]])
			}
		}
		for _, c := range cs {
			e.mustDocker("rm", "-f", c)
		}
		e.mustDocker("network", "rm", nets["a"], nets["b"])
	}
}

// allocatedIn lists the IP allocations of a tenant.
func (e *pluginEnv) allocatedIn(tenant string) []string {
	e.t.Helper()
	saved := e.name
	e.name = tenant
	defer func() { e.name = saved }()
	return e.allocated()
}
