package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/ovstest"
)

// fleet is several simulated machines on this one: a network namespace per
// host, each with an underlay port ul0 on a Linux bridge in a switch
// namespace, Debian's etcd running inside the switch namespace on its
// underlay address, and per host a netplugin agent run inside the host's
// namespace with `ip netns exec`, as it would run on a machine of its own.
// Every address is inside namespaces the test made.
type fleet struct {
	t     *testing.T
	p     string // unique prefix of every name
	sw    string // switch namespace
	net   string // the underlay's first three octets, e.g. "10.91.0"
	etcd  string // client URL, reachable from every host
	hosts []*fleetHost
}

type fleetHost struct {
	f    *fleet
	name string // host label and namespace
	vtep string
	args []string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	ovs  *ovstest.Instance // nil without OVS
}

// fleetOpts says how to build a fleet.
type fleetOpts struct {
	hosts int
	net   string // underlay /24 prefix, e.g. "10.91.0"
	mtu   int    // of the underlay ports
	ovs   bool   // each host runs its own OVS and the agent the ovs driver
	args  []string
}

func newFleet(t *testing.T, o fleetOpts) *fleet {
	t.Helper()
	nstest.RequireRoot(t)
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("needs Debian's etcd binary: apt-get install etcd-server")
	}
	p := nstest.Prefix()
	f := &fleet{t: t, p: p, sw: nstest.NS(t, p+"sw"), net: o.net}
	nstest.Exec(t, f.sw, "ip", "link", "add", "br0", "type", "bridge")
	nstest.Exec(t, f.sw, "ip", "addr", "add", o.net+".254/24", "dev", "br0")
	nstest.Exec(t, f.sw, "ip", "link", "set", "br0", "up")
	f.startEtcd(etcdBin)
	for i := 1; i <= o.hosts; i++ {
		h := &fleetHost{f: f, name: fmt.Sprintf("%sh%d", p, i), vtep: fmt.Sprintf("%s.%d", o.net, i)}
		nstest.NS(t, h.name)
		port := fmt.Sprintf("ul%d", i)
		nstest.Exec(t, h.name, "ip", "link", "add", "ul0", "mtu", fmt.Sprint(o.mtu), "type", "veth",
			"peer", "name", port, "mtu", fmt.Sprint(o.mtu), "netns", f.sw)
		nstest.Exec(t, f.sw, "ip", "link", "set", port, "master", "br0", "up")
		nstest.Exec(t, h.name, "ip", "link", "set", "ul0", "up")
		// Each host its own data and run dirs, as on a machine of its own.
		h.args = []string{"--etcd-endpoints", f.etcd, "--host-label", h.name, "--listen", "127.0.0.1:9090",
			"--data-dir", t.TempDir(), "--run-dir", t.TempDir(),
			"--resync", "1s", "--docker-plugin", "", "--docker-socket", "/nonexistent", "--vtep-ip", h.vtep}
		if o.ovs {
			// The userspace datapath sends tunnel packets itself, through a
			// netdev bridge holding the underlay port and the VTEP address.
			h.ovs = ovstest.Start(t, ovstest.WithVswitchd(), ovstest.InNetns(h.name))
			h.ovs.Vsctl(t, "add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev",
				"--", "add-port", "br-phy", "ul0", "--", "set", "Interface", "br-phy", fmt.Sprintf("mtu_request=%d", o.mtu))
			nstest.Exec(t, h.name, "ip", "addr", "add", h.vtep+"/24", "dev", "br-phy")
			nstest.Exec(t, h.name, "ip", "link", "set", "br-phy", "up")
			// As scripts/provision/ovs.sh does: no ARP answer for br-phy's
			// address from the kernel's side of the port OVS holds.
			nstest.Exec(t, h.name, "sysctl", "-qw", "net.ipv4.conf.ul0.arp_ignore=1")
			// The agent's own TCP to etcd also crosses br-phy, and the
			// userspace datapath forwards partially checksummed packets as
			// they are: the kernels must finish the checksums themselves.
			for _, c := range [][]string{{h.name, "br-phy"}, {h.name, "ul0"}, {f.sw, port}} {
				nstest.Exec(t, c[0], "ethtool", "-K", c[1], "tx", "off")
			}
			h.args = append(h.args, "--drivers", "ovs", "--ovsdb", h.ovs.Addr(), "--ovs-datapath", "netdev")
		} else {
			nstest.Exec(t, h.name, "ip", "addr", "add", h.vtep+"/24", "dev", "ul0")
			h.args = append(h.args, "--drivers", "linuxbridge")
		}
		h.args = append(h.args, o.args...)
		f.hosts = append(f.hosts, h)
		t.Cleanup(func() {
			h.stop(syscall.SIGTERM)
			if t.Failed() && h.log != nil {
				t.Logf("netplugin log of %s:\n%s", h.name, h.log)
			}
		})
	}
	return f
}

// startEtcd runs a one-member etcd in the switch namespace, its peer port on
// that namespace's own loopback.
func (f *fleet) startEtcd(bin string) {
	t := f.t
	f.etcd = "http://" + f.net + ".254:2379"
	cmd := exec.Command("ip", "netns", "exec", f.sw, bin, "--name", "sw", "--data-dir", t.TempDir(),
		"--listen-client-urls", f.etcd, "--advertise-client-urls", f.etcd,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "sw=http://127.0.0.1:2380", "--logger", "zap", "--log-level", "error")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("etcd:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := f.cli("-oper", "get", "-construct", "global"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd in %s not up:\n%s", f.sw, out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cli runs netdcli inside the switch namespace, where etcd is.
func (f *fleet) cli(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", f.sw, filepath.Join(bins, "netdcli"), "-etcd-url", f.etcd}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (f *fleet) netdcli(args ...string) string {
	f.t.Helper()
	out, err := f.cli(args...)
	if err != nil {
		f.t.Fatalf("netdcli %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// endpoints reads every endpoint of tenant with its per-host status.
func (f *fleet) endpoints(tenant string) map[string]endpointView {
	f.t.Helper()
	var views []endpointView
	out := f.netdcli("-oper", "get", "-construct", "endpoint", "-tenant", tenant, "-json")
	if err := json.Unmarshal([]byte(out), &views); err != nil {
		f.t.Fatalf("%v: %s", err, out)
	}
	m := map[string]endpointView{}
	for _, v := range views {
		m[v.Name] = v
	}
	return m
}

// waitUp waits until every endpoint of tenant reports up on its host.
func (f *fleet) waitUp(tenant string, n int) map[string]endpointView {
	f.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		eps := f.endpoints(tenant)
		up := 0
		for _, v := range eps {
			if v.Status[v.Host].State == core.StateUp {
				up++
			}
		}
		if up == n && len(eps) == n {
			return eps
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%d of %d endpoints of %s up after 60s: %+v", up, n, tenant, eps)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// endpoint creates an endpoint of tenant/network on host h, plugged into a
// fresh namespace named after it.
func (f *fleet) endpoint(tenant, network, name, ip string, h *fleetHost) string {
	f.t.Helper()
	ns := nstest.NS(f.t, f.p+name)
	f.netdcli("-oper", "create", "-construct", "endpoint", "-tenant", tenant, "-net-id", network, "-ip-address", ip,
		"-host", h.name, "-netns", ns, name)
	return ns
}

func (h *fleetHost) start() {
	t := h.f.t
	t.Helper()
	h.log = &bytes.Buffer{}
	h.cmd = exec.Command("ip", append([]string{"netns", "exec", h.name, filepath.Join(bins, "netplugin")}, h.args...)...)
	h.cmd.Stdout, h.cmd.Stderr = h.log, h.log
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !h.healthy() {
		if time.Now().After(deadline) {
			t.Fatalf("netplugin on %s not healthy after 30s:\n%s", h.name, h.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop signals the agent (ip netns exec has exec'd it: the pid is the agent's).
func (h *fleetHost) stop(sig syscall.Signal) {
	if h.cmd == nil || h.cmd.Process == nil {
		return
	}
	_ = h.cmd.Process.Signal(sig)
	_ = h.cmd.Wait()
	h.cmd = nil
}

// healthy asks the agent's /healthz, which listens inside the host's namespace.
func (h *fleetHost) healthy() bool {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: nl.DialIn(nstest.Path(h.name))}}
	r, err := c.Get("http://127.0.0.1:9090/healthz")
	if err != nil {
		return false
	}
	defer r.Body.Close()
	_, _ = io.Copy(io.Discard, r.Body)
	return r.StatusCode == http.StatusOK
}

// ourLinks lists the links in h's namespace marked as netplugin's.
func (h *fleetHost) ourLinks() []string {
	var out []string
	for _, l := range strings.Split(nstest.Exec(h.f.t, h.name, "ip", "-o", "link", "show"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.Contains(l, "alias netplugin:") {
			out = append(out, strings.TrimSuffix(f[1], ":"))
		}
	}
	return out
}

// fdb lists the own forwarding entries (bridge fdb ... self) of a device in h.
func (h *fleetHost) fdb(dev string) []string {
	var out []string
	o, err := exec.Command("bridge", "-n", h.name, "fdb", "show", "dev", dev).CombinedOutput()
	if err != nil {
		return nil // no such device
	}
	for _, l := range strings.Split(string(o), "\n") {
		if strings.Contains(l, " dst ") && strings.Contains(l, "self") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

// neighs lists the neighbour entries of a device in h.
func (h *fleetHost) neighs(dev string) []string {
	o, err := exec.Command("ip", "-n", h.name, "neigh", "show", "dev", dev).CombinedOutput()
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(o)), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// pingAll proves that every namespace of nss reaches every address of ips
// but its own.
func pingAll(t *testing.T, nss, ips []string) {
	t.Helper()
	for i, ns := range nss {
		for j, ip := range ips {
			if i != j {
				nstest.MustPing(t, ns, ip)
			}
		}
	}
}

// dfPing sends one unfragmentable echo of size bytes of payload and reports
// whether it was answered, and the output.
func dfPing(ns, ip string, size int) (bool, string) {
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c1", "-W2", "-M", "do", "-s", fmt.Sprint(size), ip).CombinedOutput()
	return err == nil, string(out)
}
