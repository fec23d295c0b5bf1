package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/state"
)

// ovsEnv is an ovsdb-server and ovs-vswitchd (userspace datapath) running in a
// namespace of their own, as one more "host" on this machine.
type ovsEnv struct {
	ns, dir string
	procs   []*exec.Cmd
	keepNS  bool // the namespace is someone else's: stop leaves it
}

func (o *ovsEnv) env() []string {
	return append(os.Environ(), "OVS_RUNDIR="+o.dir, "OVS_LOGDIR="+o.dir, "OVS_DBDIR="+o.dir, "OVS_SYSCONFDIR="+o.dir)
}

func (o *ovsEnv) sock() string { return filepath.Join(o.dir, "db.sock") }

func (o *ovsEnv) run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = o.env()
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (o *ovsEnv) vsctl(args ...string) (string, error) {
	return o.run("ovs-vsctl", append([]string{"--db=unix:" + o.sock(), "--timeout=60"}, args...)...)
}

func (b *bench) startOVS() (*ovsEnv, error) {
	o := &ovsEnv{ns: b.prefix + "ovs"}
	var err error
	if o.dir, err = os.MkdirTemp("", "npbo"); err != nil {
		return nil, err
	}
	if out, err := exec.Command("ip", "netns", "add", o.ns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	if err := o.startDaemons(); err != nil {
		o.stop()
		return nil, err
	}
	return o, nil
}

// startDaemons starts ovsdb-server and ovs-vswitchd inside o.ns, their files
// in o.dir. The caller stops o on failure.
func (o *ovsEnv) startDaemons() error {
	db := filepath.Join(o.dir, "conf.db")
	if out, err := o.run("ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"); err != nil {
		return fmt.Errorf("ovsdb-tool: %v: %s", err, out)
	}
	start := func(args ...string) error {
		cmd := exec.Command("ip", append([]string{"netns", "exec", o.ns}, args...)...)
		cmd.Env = o.env()
		if err := cmd.Start(); err != nil {
			return err
		}
		o.procs = append(o.procs, cmd)
		return nil
	}
	if err := start("ovsdb-server", db, "--remote=punix:"+o.sock(), "--unixctl="+filepath.Join(o.dir, "db.ctl"),
		"--pidfile="+filepath.Join(o.dir, "ovsdb-server.pid"), "--log-file="+filepath.Join(o.dir, "ovsdb-server.log"), "-vconsole:off"); err != nil {
		return err
	}
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(o.sock()); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := o.vsctl("--no-wait", "init"); err != nil {
		return fmt.Errorf("ovs-vsctl init: %v: %s", err, out)
	}
	if err := start("ovs-vswitchd", "unix:"+o.sock(), "--unixctl="+filepath.Join(o.dir, "vswitchd.ctl"),
		"--pidfile="+filepath.Join(o.dir, "ovs-vswitchd.pid"), "--log-file="+filepath.Join(o.dir, "ovs-vswitchd.log"), "-vconsole:off"); err != nil {
		return err
	}
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(filepath.Join(o.dir, "vswitchd.ctl")); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("ovs-vswitchd did not start")
}

func (o *ovsEnv) stop() {
	// exit --cleanup removes the userspace datapath's tap devices too.
	_, _ = o.run("ovs-appctl", "--timeout=10", "-t", filepath.Join(o.dir, "vswitchd.ctl"), "exit", "--cleanup")
	for i := len(o.procs) - 1; i >= 0; i-- {
		_ = o.procs[i].Process.Kill()
		_ = o.procs[i].Wait()
	}
	if !o.keepNS {
		_ = exec.Command("ip", "netns", "del", o.ns).Run()
	}
	os.RemoveAll(o.dir)
}

// ovs runs ovs_vsctl_baseline and attach_ovs on one OVS instance.
func (b *bench) ovs(ctx context.Context) ([]Result, error) {
	o, err := b.startOVS()
	if err != nil {
		return nil, err
	}
	defer o.stop()

	// Baseline: n veths made beforehand, then one ovs-vsctl add-port each.
	h, ns, err := nl.InNS("/var/run/netns/" + o.ns)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	defer h.Close()
	for i := 0; i < b.n; i++ {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("bq%d", i), Flags: net.FlagUp}, PeerName: fmt.Sprintf("br%d", i)}
		if err := h.LinkAdd(v); err != nil {
			return nil, fmt.Errorf("baseline veth %d: %w", i, err)
		}
	}
	if out, err := o.vsctl("add-br", "br-base", "--", "set", "Bridge", "br-base", "datapath_type=netdev"); err != nil {
		return nil, fmt.Errorf("add-br: %v: %s", err, out)
	}
	start := time.Now()
	for i := 0; i < b.n; i++ {
		if out, err := o.vsctl("add-port", "br-base", fmt.Sprintf("bq%d", i), fmt.Sprintf("tag=%d", 10+i%100)); err != nil {
			return nil, fmt.Errorf("add-port %d: %v: %s", i, err, out)
		}
	}
	base := time.Since(start)
	baseRate := float64(b.n) / base.Seconds()
	res := []Result{{Name: "ovs_vsctl_baseline", Value: baseRate, Unit: "endpoints/s",
		Note: fmt.Sprintf("%d x ovs-vsctl add-port ... tag=N (veths made beforehand), %.1f ms each", b.n, base.Seconds()*1000/float64(b.n))}}
	if out, err := o.vsctl("del-br", "br-base"); err != nil {
		return res, fmt.Errorf("del-br: %v: %s", err, out)
	}

	nss, err := makeNamespaces(b.prefix+"o", b.n)
	defer deleteNamespaces(nss)
	if err != nil {
		return res, err
	}
	env, err := b.startEtcd(ctx)
	if err != nil {
		return res, err
	}
	defer env.close()
	host, tenant := b.prefix+"-ohost", b.prefix+"o"
	defer cleanStateDirs(host)
	a, err := b.startAgent(env.url, env.listen, host, "--drivers", "ovs", "--ovsdb", "unix:"+o.sock(),
		"--ovs-datapath", "netdev", "--ovs-netns", "/var/run/netns/"+o.ns)
	if err != nil {
		return res, err
	}
	defer a.stop()
	doc := endpointsDoc(tenant, "ovs", "10.95.0.0/22", host, nss, nil)
	doc.Tenants[0].Networks[0].Tag = 300
	start = time.Now()
	if _, err := env.store.Apply(ctx, doc, host); err != nil {
		return res, err
	}
	if _, err := waitUp(ctx, env.store.Client(), host, tenant, b.n, 5*time.Minute); err != nil {
		return res, fmt.Errorf("attach: %w: %s", err, trimLog(a.log.String()))
	}
	upAt := time.Since(start)
	// Up in status means committed to OVSDB; live means vswitchd gave every
	// port an ofport. Report the stricter of the two.
	for {
		out, err := o.vsctl("--format=csv", "--no-headings", "--columns=ofport", "find", "Interface", "external_ids:netplugin-endpoint!=\"\"")
		if err != nil {
			return res, fmt.Errorf("ofports: %v: %s", err, out)
		}
		live := 0
		for _, f := range strings.Fields(out) {
			if f != "[]" && f != "-1" && f != "0" {
				live++
			}
		}
		if live >= b.n {
			break
		}
		if time.Since(start) > 5*time.Minute {
			return res, fmt.Errorf("%d of %d ports live", live, b.n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	rate := float64(b.n) / took.Seconds()
	ratio := rate / baseRate
	res = append(res, Result{Name: "attach_ovs", Value: rate, Unit: "endpoints/s", Target: ">= 10 x ovs_vsctl_baseline",
		Pass: boolp(ratio >= 10), Note: fmt.Sprintf("ratio %.1f; %d endpoints from -cfg apply to all up in %.2fs, every port live in %.2fs", ratio, b.n, upAt.Seconds(), took.Seconds())})
	if os.Getenv("NETPLUGIN_BENCH_LOG") != "" {
		fmt.Fprintln(os.Stderr, a.log.String())
	}
	_, _ = env.store.Apply(ctx, state.Document{}, host)
	return res, nil
}
