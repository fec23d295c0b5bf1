// Package ovstest runs private, throw-away Open vSwitch daemons for tests.
//
// Each Instance gets its own directory holding the database, the sockets,
// pid files and logs, and sets OVS_RUNDIR, OVS_LOGDIR and OVS_DBDIR to it, so
// several instances run side by side without touching the system's OVS. The
// daemons are child processes of the test (no --detach), stopped in
// t.Cleanup even when the test fails, and killed by the kernel
// (Pdeathsig) if the test binary dies first.
//
// The host has no OVS kernel module, so bridges must be created with
// datapath_type=netdev. Each ovs-vswitchd with a netdev datapath creates a
// tap device called "ovs-netdev" (and one per internal interface) in its
// network namespace; run every vswitchd instance of a test in its own
// namespace (NewNetns + InNetns) when more than one is up at a time. On
// cleanup vswitchd is stopped with "ovs-appctl exit --cleanup", which removes
// those devices; only a test binary killed outright (SIGKILL) leaks them,
// and then only into the namespace the daemons ran in.
package ovstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// How long daemons get to come up and go down. Generous because CI machines
// can be slow, but bounded so that a broken daemon fails the test instead of
// hanging it.
const (
	startTimeout = 15 * time.Second
	stopTimeout  = 5 * time.Second
	cmdTimeout   = 30 * time.Second
)

// Option configures Start.
type Option func(*config)

type config struct {
	vswitchd bool
	netns    string
}

// WithVswitchd also starts ovs-vswitchd against the instance's database.
func WithVswitchd() Option { return func(c *config) { c.vswitchd = true } }

// InNetns runs the daemons inside the existing network namespace name (via
// "ip netns exec"), e.g. one made by NewNetns, to simulate separate hosts.
// The unix sockets stay reachable from the test, which runs outside it.
func InNetns(name string) Option { return func(c *config) { c.netns = name } }

// Instance is one running set of OVS daemons.
type Instance struct {
	// Dir holds everything the instance creates; it is removed on cleanup.
	Dir string
	// DBSock is the ovsdb-server unix socket; Addr gives the dial string.
	DBSock string
	// DBFile is the database file.
	DBFile string
	// Netns is the namespace the daemons run in, "" for the test's own.
	Netns string

	cfg  config
	bins map[string]string

	mu       sync.Mutex
	dbServer *daemon
	vswitchd *daemon
}

// Start creates a fresh database and starts ovsdb-server (and, with
// WithVswitchd, ovs-vswitchd). It skips the test if OVS is not installed and
// fails it if the daemons do not come up.
func Start(t testing.TB, opts ...Option) *Instance {
	t.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	need := []string{"ovsdb-server", "ovsdb-tool", "ovs-vsctl"}
	if cfg.vswitchd {
		need = append(need, "ovs-vswitchd")
	}
	if cfg.netns != "" {
		need = append(need, "ip")
	}
	bins := make(map[string]string, len(need))
	for _, name := range need {
		p, err := findBinary(name)
		if err != nil {
			t.Skipf("ovstest: %s not installed (install openvswitch-switch): %v", name, err)
		}
		bins[name] = p
	}
	if (cfg.vswitchd || cfg.netns != "") && os.Geteuid() != 0 {
		t.Skip("ovstest: ovs-vswitchd and network namespaces need root")
	}
	schema, err := findSchema()
	if err != nil {
		t.Skipf("ovstest: vswitch.ovsschema not found: %v", err)
	}

	dir, err := os.MkdirTemp(shortTempBase(), "ovstest-")
	if err != nil {
		t.Fatalf("ovstest: create dir: %v", err)
	}
	// Registered first so it runs last, after the daemons are gone.
	t.Cleanup(func() { _ = os.RemoveAll(dir) })

	inst := &Instance{
		Dir:    dir,
		DBSock: filepath.Join(dir, "db.sock"),
		DBFile: filepath.Join(dir, "db.db"),
		Netns:  cfg.netns,
		cfg:    cfg,
		bins:   bins,
	}
	// Registered before anything starts so a failure half way through
	// still stops whatever did start.
	t.Cleanup(func() { inst.stopAll(t) })

	if out, err := inst.run(bins["ovsdb-tool"], "create", inst.DBFile, schema); err != nil {
		t.Fatalf("ovstest: ovsdb-tool create: %v: %s", err, out)
	}
	if err := inst.startDBServer(); err != nil {
		t.Fatalf("ovstest: %v", err)
	}
	inst.Vsctl(t, "init")
	if cfg.vswitchd {
		if err := inst.startVswitchd(); err != nil {
			t.Fatalf("ovstest: %v", err)
		}
		// A non --no-wait command returns only once vswitchd has applied
		// the database, which proves it is connected and working.
		inst.Vsctl(t, "set", "Open_vSwitch", ".", "external_ids:ovstest=ready")
	}
	return inst
}

// Addr is the address to pass to ovsdb.Dial, "unix:<DBSock>".
func (i *Instance) Addr() string { return "unix:" + i.DBSock }

// Vsctl runs ovs-vsctl against the instance's database and returns its
// trimmed standard output; it fails the test if the command fails. Without
// ovs-vswitchd it passes --no-wait, since nothing would acknowledge the
// change and ovs-vsctl would block until its timeout.
func (i *Instance) Vsctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := i.TryVsctl(args...)
	if err != nil {
		t.Fatalf("ovstest: ovs-vsctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// TryVsctl is Vsctl for commands expected to fail: it returns the error
// (including ovs-vsctl's stderr) instead of failing the test.
func (i *Instance) TryVsctl(args ...string) (string, error) {
	full := []string{"--db=" + i.Addr(), "--timeout=20"}
	i.mu.Lock()
	if i.vswitchd == nil || i.vswitchd.exited() {
		full = append(full, "--no-wait")
	}
	i.mu.Unlock()
	full = append(full, args...)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, i.bins["ovs-vsctl"], full...)
	cmd.Env = i.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Command returns an unstarted command with the instance's OVS_RUNDIR etc.,
// for other OVS tools such as ovs-ofctl or ovs-appctl, which find the
// bridges' and daemons' sockets through OVS_RUNDIR.
func (i *Instance) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = i.env()
	return cmd
}

// KillDBServer kills ovsdb-server with SIGKILL, as a crash would, and waits
// for it to exit. Clients see their connection drop.
func (i *Instance) KillDBServer(t testing.TB) {
	t.Helper()
	i.mu.Lock()
	d := i.dbServer
	i.mu.Unlock()
	if d == nil {
		t.Fatal("ovstest: ovsdb-server is not running")
	}
	if err := d.kill(); err != nil {
		t.Fatalf("ovstest: kill ovsdb-server: %v", err)
	}
}

// RestartDBServer starts ovsdb-server again on the same database and socket,
// after KillDBServer; an old server still running is stopped first.
func (i *Instance) RestartDBServer(t testing.TB) {
	t.Helper()
	i.mu.Lock()
	d := i.dbServer
	i.mu.Unlock()
	if d != nil && !d.exited() {
		d.stop()
	}
	if err := i.startDBServer(); err != nil {
		t.Fatalf("ovstest: restart: %v", err)
	}
}

func (i *Instance) env() []string {
	return append(os.Environ(),
		"OVS_RUNDIR="+i.Dir, "OVS_LOGDIR="+i.Dir, "OVS_DBDIR="+i.Dir,
		"OVS_SYSCONFDIR="+i.Dir)
}

// run runs a short helper command to completion and returns its output.
func (i *Instance) run(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = i.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (i *Instance) startDBServer() error {
	// A socket left by a killed server would not answer; removing it makes
	// "socket accepts connections" an exact readiness signal.
	_ = os.Remove(i.DBSock)
	ctl := filepath.Join(i.Dir, "ovsdb-server.ctl")
	d, err := i.startDaemon("ovsdb-server", i.DBFile,
		"--remote=punix:"+i.DBSock,
		// Like a system install, also listen where Manager rows say, so
		// tests can add TCP listeners or probe settings with ovs-vsctl
		// set-manager.
		"--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
		"--unixctl="+ctl,
		"--pidfile="+filepath.Join(i.Dir, "ovsdb-server.pid"), "--overwrite-pidfile",
		"--log-file="+filepath.Join(i.Dir, "ovsdb-server.log"),
		"-vconsole:off")
	if err != nil {
		return err
	}
	i.mu.Lock()
	i.dbServer = d
	i.mu.Unlock()
	return d.waitSocket(i.DBSock)
}

func (i *Instance) startVswitchd() error {
	ctl := filepath.Join(i.Dir, "ovs-vswitchd.ctl")
	d, err := i.startDaemon("ovs-vswitchd", i.Addr(),
		"--unixctl="+ctl,
		"--pidfile="+filepath.Join(i.Dir, "ovs-vswitchd.pid"), "--overwrite-pidfile",
		"--log-file="+filepath.Join(i.Dir, "ovs-vswitchd.log"),
		"-vconsole:off")
	if err != nil {
		return err
	}
	// SIGTERM leaves the userspace datapath's tap devices behind (OVS keeps
	// datapaths across restarts); "exit --cleanup" deletes them.
	if appctl, err := findBinary("ovs-appctl"); err == nil {
		d.graceful = func() error {
			_, err := i.run(appctl, "--timeout=5", "-t", ctl, "exit", "--cleanup")
			return err
		}
	}
	i.mu.Lock()
	i.vswitchd = d
	i.mu.Unlock()
	return d.waitSocket(ctl)
}

// stopAll stops vswitchd before ovsdb-server so that vswitchd does not spend
// its shutdown reconnecting, and prints the daemons' logs if the test failed.
func (i *Instance) stopAll(t testing.TB) {
	i.mu.Lock()
	ds := []*daemon{i.vswitchd, i.dbServer}
	i.mu.Unlock()
	for _, d := range ds {
		if d != nil {
			d.stop()
		}
	}
	if t.Failed() {
		for _, name := range []string{"ovsdb-server", "ovs-vswitchd"} {
			for _, f := range []string{name + ".log", name + ".stderr"} {
				if tail := tailFile(filepath.Join(i.Dir, f), 40); tail != "" {
					t.Logf("ovstest: %s:\n%s", f, tail)
				}
			}
		}
	}
}

func findBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	// Daemons live in sbin, which a non-login PATH may lack.
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not in PATH or sbin directories", name)
}

func findSchema() (string, error) {
	for _, p := range []string{
		"/usr/share/openvswitch/vswitch.ovsschema",
		"/usr/local/share/openvswitch/vswitch.ovsschema",
	} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("looked in /usr/share/openvswitch and /usr/local/share/openvswitch")
}

// shortTempBase picks a temp root short enough for unix socket paths (108
// bytes), which t.TempDir, carrying the test name, can exceed.
func shortTempBase() string {
	if base := os.TempDir(); len(base) <= 40 {
		return base
	}
	return "/tmp"
}

func tailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// waitSocket waits until path accepts a unix connection or the daemon dies.
func (d *daemon) waitSocket(path string) error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if d.exited() {
			return fmt.Errorf("%s exited during start-up: %s", d.name, tailFile(d.stderr, 20))
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not open %s within %v", d.name, path, startTimeout)
}
