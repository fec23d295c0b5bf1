package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

// removeTenant deletes everything of a tenant through netdcli on host h
// (endpoints eight at a time), then the tenant: a test's cleanup.
func (c *cluster) removeTenant(t testing.TB, h, tenant string) {
	t.Helper()
	var views []endpointView
	out, err := c.tryExec(h, "netdcli", "-oper", "get", "-construct", "endpoint", "-tenant", tenant, "-json")
	if err != nil || json.Unmarshal([]byte(out), &views) != nil {
		t.Errorf("cleanup of tenant %s: list endpoints: %v %s", tenant, err, out)
		return
	}
	if len(views) > 0 {
		var names []string
		for _, v := range views {
			names = append(names, v.Name)
		}
		args := append([]string{"sh", "-c", `printf '%s\n' "$@" | xargs -P 8 -n 1 netdcli -oper delete -construct endpoint -tenant "$0"`,
			tenant}, names...)
		if out, err := c.tryExec(h, args...); err != nil {
			t.Errorf("cleanup of tenant %s: delete endpoints: %v %s", tenant, err, out)
		}
	}
	c.removePolicies(t, h, tenant)
	var nets []core.Network
	out, err = c.tryExec(h, "netdcli", "-oper", "get", "-construct", "network", "-tenant", tenant, "-json")
	if err != nil || json.Unmarshal([]byte(out), &nets) != nil {
		t.Errorf("cleanup of tenant %s: list networks: %v %s", tenant, err, out)
		return
	}
	for _, n := range nets {
		if out, err := c.tryExec(h, "netdcli", "-oper", "delete", "-construct", "network", "-tenant", tenant, n.Name); err != nil {
			t.Errorf("cleanup of tenant %s: %v %s", tenant, err, out)
		}
	}
	if out, err := c.tryExec(h, "netdcli", "-oper", "delete", "-construct", "tenant", tenant); err != nil {
		t.Errorf("cleanup of tenant %s: %v %s", tenant, err, out)
	}
}

// newTenant creates a tenant on host h, removed with everything in it at the end of the test.
func (c *cluster) newTenant(t *testing.T, h, name string) string {
	t.Helper()
	c.netdcli(t, h, "-oper", "create", "-construct", "tenant", name)
	t.Cleanup(func() { c.removeTenant(t, h, name) })
	return name
}

// TestNetworksSpanThreeHosts (system test 1): a VLAN network carried by the
// OVS trunks and VXLAN networks (OVS tunnels, linuxbridge VXLAN devices), each
// with an endpoint on every host: every endpoint pings every other one. A
// second tenant's network with the same subnet on another tag or VNI works as
// well, and the two cannot reach each other, across hosts or on one host.
func TestNetworksSpanThreeHosts(t *testing.T) {
	c := sharedCluster(t)
	for _, tc := range []struct {
		name, driver, tagType string
		tags                  [2]int
		skip                  string
	}{
		{name: "ovs-vlan", driver: "ovs", tagType: "vlan", tags: [2]int{101, 102}},
		{name: "ovs-vxlan", driver: "ovs", tagType: "vxlan", tags: [2]int{5101, 5102}},
		{name: "linuxbridge-vxlan", driver: "linuxbridge", tagType: "vxlan", tags: [2]int{5201, 5202}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skip != "" {
				t.Skip(tc.skip)
			}
			p := nstest.Prefix()
			var groups [2][]*ep
			for i, suffix := range []string{"a", "b"} {
				tenant := c.newTenant(t, "h1", p+suffix)
				c.netdcli(t, "h1", "-oper", "create", "-construct", "network", "-tenant", tenant, "-driver", tc.driver,
					"-tag-type", tc.tagType, "-tag", fmt.Sprint(tc.tags[i]), "-subnet", "10.61.0.0/24", "net")
				for j, h := range c.hosts() {
					e := &ep{tenant: tenant, net: "net", name: fmt.Sprintf("%s%d", suffix, j+1), host: h,
						ip: fmt.Sprintf("10.61.0.%d", 10*(i+1)+j+1)}
					c.addEP(t, p, e)
					groups[i] = append(groups[i], e)
				}
			}
			c.waitUp(t, 60*time.Second, append(groups[0], groups[1]...)...)
			// Each tenant's network works on its own...
			meshReachable(t, groups[0])
			meshReachable(t, groups[1])
			// ...and they stay apart: across hosts both ways, and on one host.
			a, b := groups[0], groups[1]
			isolated(t, a[0], b[1])
			isolated(t, a[0], b[2])
			isolated(t, b[0], a[1])
			isolated(t, b[2], a[1])
			isolated(t, a[0], b[0])
			if tc.driver == "ovs" && tc.tagType == "vlan" {
				// The traffic crossed the trunks: each host's uplink carries both tags.
				for _, h := range c.hosts() {
					trunks := c.exec(t, h, "ovs-vsctl", "get", "Port", "trk0", "trunks")
					for _, tag := range tc.tags {
						if !strings.Contains(trunks, fmt.Sprint(tag)) {
							t.Fatalf("%s: trunk trk0 carries %s, not VLAN %d", h, strings.TrimSpace(trunks), tag)
						}
					}
				}
			}
		})
	}
}

// TestDockerAcrossHosts (system test 2): `docker network create -d netplugin`
// on every host makes one network; containers on different hosts ping each
// other. `docker network rm` on one host (after its container went) frees
// that host's address and leaves the others working.
func TestDockerAcrossHosts(t *testing.T) {
	c := sharedCluster(t)
	p := nstest.Prefix()
	tenant, net := p, p+"-web"
	hosts := c.hosts()
	ctr := func(h string) string { return p + "-" + h }
	t.Cleanup(func() {
		for _, h := range hosts {
			_, _ = c.tryExec(h, "docker", "rm", "-f", ctr(h))
			_, _ = c.tryExec(h, "docker", "network", "rm", net)
		}
		c.removeTenant(t, "h1", tenant)
	})
	for _, h := range hosts {
		c.exec(t, h, "docker", "network", "create", "-d", "netplugin", "--ipam-driver", "netplugin",
			"--subnet", "10.62.0.0/24", "-o", "tenant="+tenant, "-o", "tag-type=vxlan", net)
	}
	ips := map[string]string{}
	for _, h := range hosts {
		c.exec(t, h, "docker", "run", "-d", "--name", ctr(h), "--network", net, "netplugin-test/busybox", "sleep", "1d")
		ip := strings.TrimSpace(c.exec(t, h, "docker", "inspect", "-f",
			fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, net), ctr(h)))
		if _, err := netip.ParseAddr(ip); err != nil {
			t.Fatalf("%s: container %s has no address on %s: %q", h, ctr(h), net, ip)
		}
		for other, oip := range ips {
			if oip == ip {
				t.Fatalf("%s and %s both got %s", h, other, ip)
			}
		}
		ips[h] = ip
	}
	dockerPing := func(from, to string) bool {
		_, err := c.tryExec(from, "docker", "exec", ctr(from), "ping", "-c", "1", "-W", "1", ips[to])
		return err == nil
	}
	mesh := func(hs ...string) {
		for _, a := range hs {
			for _, b := range hs {
				if a != b {
					waitFor(t, 20*time.Second, fmt.Sprintf("container on %s pings the one on %s", a, b),
						func() bool { return dockerPing(a, b) })
				}
			}
		}
	}
	mesh(hosts...)
	before := c.allocatedIPs(t, "h1", tenant, net)

	c.exec(t, "h2", "docker", "rm", "-f", ctr("h2"))
	c.exec(t, "h2", "docker", "network", "rm", net)
	mesh("h1", "h3")
	c.netdcli(t, "h1", "-oper", "get", "-construct", "network", "-tenant", tenant, net)
	after := c.allocatedIPs(t, "h1", tenant, net)
	if len(after) != len(before)-1 || strings.Contains(strings.Join(after, " "), ips["h2"]) {
		t.Fatalf("after h2's container and network went: allocated %v, before %v (h2 had %s)", after, before, ips["h2"])
	}
}

// TestConcurrentEndpointsOnThreeHosts (system test 3): three hosts each create
// 100 endpoints on one network at the same moment, ten at a time, each host
// through its own etcd member: 300 endpoints, 300 distinct addresses in the
// subnet, 300 allocations in etcd — none lost, none given twice.
func TestConcurrentEndpointsOnThreeHosts(t *testing.T) {
	c := sharedCluster(t)
	p := nstest.Prefix()
	tenant := c.newTenant(t, "h1", p)
	c.netdcli(t, "h1", "-oper", "create", "-construct", "network", "-tenant", tenant, "-subnet", "10.63.0.0/23", "net")
	const per = 100
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, c.n)
	for i, h := range c.hosts() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := c.tryExec(h, "sh", "-c", fmt.Sprintf(
				`seq 1 %d | xargs -P 10 -I{} netdcli -oper create -construct endpoint -tenant %s -net-id net -host %s %s-e{} >/dev/null`,
				per, tenant, h, h))
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w %s", h, err, out)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	eps := c.endpoints(t, "h2", tenant)
	subnet := netip.MustParsePrefix("10.63.0.0/23")
	byIP := map[string]string{}
	for name, v := range eps {
		ip, err := netip.ParseAddr(v.IP)
		if err != nil || !subnet.Contains(ip) {
			t.Fatalf("%s: address %q outside %s", name, v.IP, subnet)
		}
		if other, ok := byIP[v.IP]; ok {
			t.Fatalf("%s given to %s and %s", v.IP, other, name)
		}
		byIP[v.IP] = name
		if !strings.HasPrefix(name, v.Host+"-") {
			t.Fatalf("%s homed on %s", name, v.Host)
		}
	}
	if len(eps) != c.n*per || len(byIP) != c.n*per {
		t.Fatalf("%d endpoints with %d distinct addresses, want %d", len(eps), len(byIP), c.n*per)
	}
	alloc := c.allocatedIPs(t, "h3", tenant, "net")
	if len(alloc) != c.n*per {
		t.Fatalf("%d IP allocations in etcd for %d endpoints", len(alloc), c.n*per)
	}
	for _, ip := range alloc {
		if _, ok := byIP[ip]; !ok {
			t.Fatalf("allocation %s belongs to no endpoint", ip)
		}
	}
	t.Logf("%d endpoints created from %d hosts at once in %v (%.0f/s)", c.n*per, c.n, took.Round(10*time.Millisecond),
		float64(c.n*per)/took.Seconds())
}

// TestDockerTenantsShareSubnet: two tenants' Docker networks with the same
// subnet on the same hosts stay apart, and each container's address is
// allocated once, in its own tenant's network only (and freed with it).
func TestDockerTenantsShareSubnet(t *testing.T) {
	requireE2E(t)
	c := sharedCluster(t)
	p := nstest.Prefix()
	tenants := []string{p + "blue", p + "red"}
	hosts := []string{"h1", "h3"}
	ctr := func(tenant, h string) string { return tenant + "-" + h }
	t.Cleanup(func() {
		for _, tenant := range tenants {
			for _, h := range hosts {
				_, _ = c.tryExec(h, "docker", "rm", "-f", ctr(tenant, h))
				_, _ = c.tryExec(h, "docker", "network", "rm", tenant)
			}
			c.removeTenant(t, "h1", tenant)
		}
	})
	// Addresses of their own, so that an answer from the other tenant's
	// address can only come from the other tenant.
	ips := map[string]string{} // container -> address
	for i, tenant := range tenants {
		for j, h := range hosts {
			ip := fmt.Sprintf("10.72.0.%d", 10*(i+1)+j+1)
			c.exec(t, h, "docker", "network", "create", "-d", "netplugin", "--ipam-driver", "netplugin",
				"--subnet", "10.72.0.0/24", "-o", "tenant="+tenant, "-o", "network=web", "-o", "tag-type=vxlan", tenant)
			c.exec(t, h, "docker", "run", "-d", "--name", ctr(tenant, h), "--network", tenant, "--ip", ip,
				"netplugin-test/busybox", "sleep", "1d")
			ips[ctr(tenant, h)] = ip
		}
	}
	ping := func(h, from, ip string) bool {
		_, err := c.tryExec(h, "docker", "exec", from, "ping", "-c", "1", "-W", "1", ip)
		return err == nil
	}
	for _, tenant := range tenants {
		a, b := ctr(tenant, "h1"), ctr(tenant, "h3")
		waitFor(t, 20*time.Second, a+" pings "+b, func() bool { return ping("h1", a, ips[b]) })
	}
	if ping("h1", ctr(tenants[1], "h1"), ips[ctr(tenants[0], "h3")]) {
		t.Fatalf("%s reaches %s of the other tenant", ctr(tenants[1], "h1"), ctr(tenants[0], "h3"))
	}
	for i, tenant := range tenants {
		alloc := " " + strings.Join(c.allocatedIPs(t, "h1", tenant, "web"), " ") + " "
		other := tenants[1-i]
		for _, h := range hosts {
			if !strings.Contains(alloc, " "+ips[ctr(tenant, h)]+" ") {
				t.Fatalf("%s's address %s not allocated in %s: %s", ctr(tenant, h), ips[ctr(tenant, h)], tenant, alloc)
			}
			if strings.Contains(alloc, " "+ips[ctr(other, h)]+" ") {
				t.Fatalf("%s's address %s is allocated in %s too: %s", ctr(other, h), ips[ctr(other, h)], tenant, alloc)
			}
		}
	}
}

// TestMacvlanAcrossHosts: a macvlan network whose parent is every host's
// underlay interface par0 spans the hosts through the switch the parents plug
// into: an endpoint on each host reaches every other. (Two tenants on one
// parent share its L2 segment: macvlan keeps tenants apart only with
// -opt vlan=ID, which needs 802.1Q, tested in the kernel lab.)
func TestMacvlanAcrossHosts(t *testing.T) {
	c := sharedCluster(t)
	p := nstest.Prefix()
	tenant := c.newTenant(t, "h1", p)
	c.netdcli(t, "h1", "-oper", "create", "-construct", "network", "-tenant", tenant, "-driver", "macvlan",
		"-opt", "parent=par0", "-subnet", "10.66.0.0/24", "net")
	var eps []*ep
	for i, h := range c.hosts() {
		e := &ep{tenant: tenant, net: "net", name: fmt.Sprintf("m%d", i+1), host: h, ip: fmt.Sprintf("10.66.0.%d", i+1)}
		c.addEP(t, p, e)
		eps = append(eps, e)
	}
	c.waitUp(t, 60*time.Second, eps...)
	meshReachable(t, eps)
}
