package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/netplugin/netplugin/internal/iperf"
	"github.com/netplugin/netplugin/internal/nl"
)

// xhostNet is the underlay /24 of the cross-host benchmark, inside its own
// namespaces only.
const xhostNet = "10.99.0"

// xhostEnv is four simulated hosts on one underlay switch namespace running
// Debian's etcd: two run linuxbridge, two run their own OVS (userspace
// datapath), each with an agent run inside its namespace, as on a machine of
// its own.
type xhostEnv struct {
	b     *bench
	sw    string
	etcd  *exec.Cmd
	dir   string
	nss   []string // every namespace made, deleted at close
	ovs   []*ovsEnv
	procs []*exec.Cmd // agents
}

func (x *xhostEnv) ns(name string) (string, error) {
	ns := x.b.prefix + name
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns add %s: %v: %s", ns, err, out)
	}
	x.nss = append(x.nss, ns)
	return ns, run("ip", "-n", ns, "link", "set", "lo", "up")
}

func run(args ...string) error {
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (x *xhostEnv) close() {
	for _, p := range x.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
		_ = p.Wait()
	}
	for _, o := range x.ovs {
		o.stop()
	}
	if x.etcd != nil {
		_ = x.etcd.Process.Kill()
		_ = x.etcd.Wait()
	}
	// Deleting a namespace deletes every link in it.
	for i := len(x.nss) - 1; i >= 0; i-- {
		_ = exec.Command("ip", "netns", "del", x.nss[i]).Run()
	}
	os.RemoveAll(x.dir)
}

func (x *xhostEnv) netdcli(args ...string) error {
	full := append([]string{"netns", "exec", x.sw, filepath.Join(filepath.Dir(x.b.netplugin), "netdcli"),
		"-etcd-url", "http://" + xhostNet + ".254:2379"}, args...)
	return run(append([]string{"ip"}, full...)...)
}

// host makes a host namespace with its underlay port ul<i> on the switch.
func (x *xhostEnv) host(i int) (string, error) {
	h, err := x.ns(fmt.Sprintf("x%d", i))
	if err != nil {
		return "", err
	}
	port := fmt.Sprintf("ul%d", i)
	for _, c := range [][]string{
		{"ip", "-n", h, "link", "add", "ul0", "type", "veth", "peer", "name", port, "netns", x.sw},
		{"ip", "-n", x.sw, "link", "set", port, "master", "br0", "up"},
		{"ip", "-n", h, "link", "set", "ul0", "up"},
	} {
		if err := run(c...); err != nil {
			return "", err
		}
	}
	return h, nil
}

// agent runs netplugin inside host namespace h and waits until it is healthy.
func (x *xhostEnv) agent(h, vtep string, extra ...string) error {
	args := append([]string{"netns", "exec", h, x.b.netplugin, "--etcd-endpoints", "http://" + xhostNet + ".254:2379",
		"--host-label", h, "--listen", "127.0.0.1:9090", "--resync", "10s", "--docker-plugin", "",
		"--data-dir", filepath.Join(x.dir, h, "data"), "--run-dir", filepath.Join(x.dir, h, "run"),
		"--docker-socket", "/nonexistent", "--vtep-ip", vtep}, extra...)
	cmd := exec.Command("ip", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	x.procs = append(x.procs, cmd)
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: nl.DialIn("/var/run/netns/" + h)}}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if r, err := c.Get("http://127.0.0.1:9090/healthz"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return fmt.Errorf("agent on %s not healthy after 30s", h)
}

func (b *bench) startXhost() (*xhostEnv, error) {
	x := &xhostEnv{b: b}
	var err error
	if x.dir, err = os.MkdirTemp("", "np-bench-xhost"); err != nil {
		return nil, err
	}
	fail := func(err error) (*xhostEnv, error) { x.close(); return nil, err }
	if x.sw, err = x.ns("xs"); err != nil {
		return fail(err)
	}
	for _, c := range [][]string{
		{"ip", "-n", x.sw, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", x.sw, "addr", "add", xhostNet + ".254/24", "dev", "br0"},
		{"ip", "-n", x.sw, "link", "set", "br0", "up"},
	} {
		if err := run(c...); err != nil {
			return fail(err)
		}
	}
	url := "http://" + xhostNet + ".254:2379"
	x.etcd = exec.Command("ip", "netns", "exec", x.sw, "etcd", "--name", "sw", "--data-dir", filepath.Join(x.dir, "etcd"),
		"--listen-client-urls", url, "--advertise-client-urls", url,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "sw=http://127.0.0.1:2380", "--logger", "zap", "--log-level", "error")
	x.etcd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := x.etcd.Start(); err != nil {
		return fail(fmt.Errorf("etcd (apt-get install etcd-server): %w", err))
	}
	for deadline := time.Now().Add(30 * time.Second); x.netdcli("-oper", "get", "-construct", "global") != nil; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fail(errors.New("etcd in the switch namespace not up after 30s"))
		}
	}
	// Hosts 1 and 2: linuxbridge, the VTEP on the underlay port.
	for i := 1; i <= 2; i++ {
		h, err := x.host(i)
		if err != nil {
			return fail(err)
		}
		vtep := fmt.Sprintf("%s.%d", xhostNet, i)
		if err := run("ip", "-n", h, "addr", "add", vtep+"/24", "dev", "ul0"); err != nil {
			return fail(err)
		}
		if err := x.agent(h, vtep, "--drivers", "linuxbridge"); err != nil {
			return fail(err)
		}
	}
	// Hosts 3 and 4: OVS, the VTEP on a netdev bridge holding the underlay
	// port (the userspace datapath routes tunnel packets only through one),
	// with transmit checksums done by the kernel: the userspace datapath
	// forwards partially checksummed packets as they are.
	for i := 3; i <= 4; i++ {
		h, err := x.host(i)
		if err != nil {
			return fail(err)
		}
		o, err := startOVSIn(h)
		if err != nil {
			return fail(err)
		}
		x.ovs = append(x.ovs, o)
		vtep := fmt.Sprintf("%s.%d", xhostNet, i)
		if out, err := o.vsctl("add-br", "br-phy", "--", "set", "Bridge", "br-phy", "datapath_type=netdev", "--", "add-port", "br-phy", "ul0"); err != nil {
			return fail(fmt.Errorf("br-phy: %v: %s", err, out))
		}
		for _, c := range [][]string{
			{"ip", "-n", h, "addr", "add", vtep + "/24", "dev", "br-phy"},
			{"ip", "-n", h, "link", "set", "br-phy", "up"},
			{"ip", "netns", "exec", h, "ethtool", "-K", "br-phy", "tx", "off"},
			{"ip", "netns", "exec", h, "ethtool", "-K", "ul0", "tx", "off"},
			{"ip", "netns", "exec", x.sw, "ethtool", "-K", fmt.Sprintf("ul%d", i), "tx", "off"},
		} {
			if err := run(c...); err != nil {
				return fail(err)
			}
		}
		if err := x.agent(h, vtep, "--drivers", "ovs", "--ovsdb", "unix:"+o.sock(), "--ovs-datapath", "netdev"); err != nil {
			return fail(err)
		}
	}
	return x, nil
}

// startOVSIn starts ovsdb-server and ovs-vswitchd inside the existing
// namespace ns; stop leaves the namespace to its owner.
func startOVSIn(ns string) (*ovsEnv, error) {
	o := &ovsEnv{ns: ns, keepNS: true}
	var err error
	if o.dir, err = os.MkdirTemp("", "npbx"); err != nil {
		return nil, err
	}
	if err := o.startDaemons(); err != nil {
		o.stop()
		return nil, err
	}
	return o, nil
}

// xhost measures TCP throughput between containers on two hosts over a
// linuxbridge VXLAN network and over an OVS VXLAN network, against TCP between
// the two hosts' own ends of the same underlay (a plain veth pair into one
// switch), alternating the three, median of three runs each.
func (b *bench) xhost(ctx context.Context) ([]Result, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, errors.New("needs iperf3 (apt-get install iperf3)")
	}
	x, err := b.startXhost()
	if err != nil {
		return nil, err
	}
	defer x.close()
	tn := x.b.prefix + "x"
	if err := x.netdcli("-oper", "create", "-construct", "tenant", tn); err != nil {
		return nil, err
	}
	pairs := []struct{ name, driver, subnet, hostA, hostB string }{
		{"linuxbridge", "linuxbridge", "10.99.1", x.b.prefix + "x1", x.b.prefix + "x2"},
		{"ovs", "ovs", "10.99.2", x.b.prefix + "x3", x.b.prefix + "x4"},
	}
	type path struct{ from, to, ip string }
	paths := map[string]path{"veth": {x.b.prefix + "x1", x.b.prefix + "x2", xhostNet + ".2"}}
	for _, p := range pairs {
		if err := x.netdcli("-oper", "create", "-construct", "network", "-tenant", tn, "-driver", p.driver, "-tag-type", "vxlan",
			"-subnet", p.subnet+".0/24", p.name); err != nil {
			return nil, err
		}
		var cs [2]string
		for i, h := range []string{p.hostA, p.hostB} {
			if cs[i], err = x.ns(fmt.Sprintf("c%s%d", p.name[:1], i)); err != nil {
				return nil, err
			}
			if err := x.netdcli("-oper", "create", "-construct", "endpoint", "-tenant", tn, "-net-id", p.name,
				"-ip-address", fmt.Sprintf("%s.%d", p.subnet, i+1), "-host", h, "-netns", cs[i], fmt.Sprintf("%s%d", p.name, i)); err != nil {
				return nil, err
			}
		}
		ip := p.subnet + ".2"
		for deadline := time.Now().Add(60 * time.Second); run("ip", "netns", "exec", cs[0], "ping", "-c1", "-W1", ip) != nil; {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s: containers on two hosts never reached each other", p.name)
			}
		}
		if p.driver == "ovs" {
			for _, c := range cs { // see startXhost: checksums by the kernel
				if err := run("ip", "netns", "exec", c, "ethtool", "-K", "eth0", "tx", "off"); err != nil {
					return nil, err
				}
			}
		}
		paths[p.name] = path{cs[0], cs[1], ip}
	}
	const rounds, secs = 5, 4
	rates := map[string][]float64{}
	for r := 0; r < rounds; r++ {
		for _, name := range []string{"veth", "linuxbridge", "ovs"} {
			p := paths[name]
			v, err := iperf.Run(ctx, p.from, p.to, p.ip, iperf.Options{Seconds: secs})
			if err != nil {
				return nil, err
			}
			rates[name] = append(rates[name], v.BitsPerSecond/1e9)
		}
	}
	median := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	base := median(rates["veth"])
	res := []Result{{Name: "xhost_tcp_veth", Value: base, Unit: "Gbit/s",
		Note: fmt.Sprintf("iperf3 TCP between two hosts' ends of the underlay (veth into one switch bridge), median of %d x %ds: %.2f", rounds, secs, rates["veth"])}}
	for _, name := range []string{"linuxbridge", "ovs"} {
		v := median(rates[name])
		note := fmt.Sprintf("ratio %.2f to xhost_tcp_veth; containers on two hosts over a VXLAN network, median of %d x %ds: %.2f", v/base, rounds, secs, rates[name])
		if name == "ovs" {
			note += "; OVS userspace datapath (no kernel module here)"
		}
		res = append(res, Result{Name: "xhost_tcp_" + name, Value: v, Unit: "Gbit/s", Note: note})
	}
	return res, nil
}
