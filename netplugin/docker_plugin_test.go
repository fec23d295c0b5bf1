package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/testenv"
	"github.com/netplugin/netplugin/state"
)

// pluginEnv is a netplugin serving a uniquely named Docker plugin to a dockerd.
type pluginEnv struct {
	t     *testing.T
	dk    *testenv.Docker
	d     *daemon
	name  string // plugin name, also the tenant
	store *state.Store
	host  string
}

func newPluginEnv(t *testing.T) *pluginEnv {
	nstest.RequireRoot(t)
	return startPluginEnv(t, testenv.StartDocker(t), nstest.Prefix())
}

// startPluginEnv starts a netplugin serving the plugin named p to dk, with
// extra agent flags, and a store client on its etcd.
func startPluginEnv(t *testing.T, dk *testenv.Docker, p string, extra ...string) *pluginEnv {
	e := &pluginEnv{t: t, dk: dk, name: p, host: p + "-host"}
	e.d = newDaemon(t, e.host, append([]string{"--docker-socket", dk.Socket(), "--docker-plugin", p}, extra...)...)
	e.d.start()
	e.store = e.d.store()
	return e
}

func (e *pluginEnv) docker(args ...string) (string, error) {
	e.t.Helper()
	return e.dk.CLI(e.t, args...)
}

func (e *pluginEnv) mustDocker(args ...string) string {
	e.t.Helper()
	out, err := e.docker(args...)
	if err != nil {
		e.t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

func (e *pluginEnv) createNet(name, subnet, gw string, opts ...string) string {
	e.t.Helper()
	args := []string{"network", "create", "-d", e.name, "--ipam-driver", e.name, "--subnet", subnet, "--gateway", gw, "-o", "tenant=" + e.name}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	id := e.mustDocker(append(args, name)...)
	e.t.Cleanup(func() { _, _ = e.dk.CLI(e.t, "network", "rm", name) })
	return id
}

func (e *pluginEnv) run(name, network string, extra ...string) string {
	e.t.Helper()
	args := append([]string{"run", "-d", "--network", network, "--name", name, "--label", testenv.ContainerLabel}, extra...)
	id := e.mustDocker(append(args, e.dk.Image, "sleep", "1d")...)
	e.t.Cleanup(func() { _, _ = e.dk.CLI(e.t, "rm", "-f", name) })
	return id
}

func (e *pluginEnv) ipOf(container, network string) string {
	e.t.Helper()
	return e.mustDocker("inspect", "-f", "{{(index .NetworkSettings.Networks \""+network+"\").IPAddress}}", container)
}

func (e *pluginEnv) ping(from, ip string) bool {
	for i := 0; i < 5; i++ {
		if _, err := e.docker("exec", from, "ping", "-c1", "-W1", ip); err == nil {
			return true
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false
}

// allocated lists the IP allocations of the plugin's tenant.
func (e *pluginEnv) allocated() []string {
	e.t.Helper()
	r, err := e.store.Client().Get(context.Background(), state.Prefix+"alloc/ip/"+e.name+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, kv := range r.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func (e *pluginEnv) waitNoLeaks() {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		leaked := nstest.MarkedLinks(e.t, e.host)
		if len(leaked) == 0 && len(e.allocated()) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("left behind: links %v, allocations %v", leaked, e.allocated())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestDockerPlugin(t *testing.T) {
	e := newPluginEnv(t)
	web := e.name + "-web"
	db := e.name + "-db"
	e.createNet(web, "10.82.0.0/24", "10.82.0.1", "tag=200")
	e.createNet(db, "10.82.1.0/24", "10.82.1.1", "tag=201")

	// The Docker network is netplugin's network, under its Docker name.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(bins+"/netdcli", "-etcd-url", e.d.etcdURL, "-oper", "get", "-construct", "network", "-tenant", e.name, web).CombinedOutput()
		if err == nil && strings.Contains(string(out), "10.82.0.0/24") && strings.Contains(string(out), " 200 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("netdcli does not show %s: %s", web, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	web1 := e.name + "-web1"
	e.run(web1, web, "--ip", "10.82.0.10", "--mac-address", "02:42:0a:52:00:0a")
	if ip := e.ipOf(web1, web); ip != "10.82.0.10" {
		t.Fatalf("--ip not honoured: %s", ip)
	}
	if out := e.mustDocker("exec", web1, "ip", "link", "show", "eth0"); !strings.Contains(out, "02:42:0a:52:00:0a") {
		t.Fatalf("--mac-address not honoured:\n%s", out)
	}
	web2 := e.name + "-web2"
	e.run(web2, web)
	if !e.ping(web2, "10.82.0.10") {
		t.Fatal("two containers on one netplugin network cannot ping")
	}
	if out, err := e.docker("run", "--rm", "--network", web, e.dk.Image, "ping", "-c1", "-W2", "10.82.0.10"); err != nil {
		t.Fatalf("docker run --rm ... ping: %v %s", err, out)
	}
	other := e.name + "-other"
	e.run(other, db)
	if !e.ping(other, "10.82.1.1") { // other works on its own network: what follows is isolation
		t.Fatal("a container on the db network cannot reach its gateway")
	}
	if e.ping(other, "10.82.0.10") {
		t.Fatal("a container on another network (other tag) reaches web1")
	}
	// connect / disconnect a running container.
	e.mustDocker("network", "connect", web, other)
	if !e.ping(other, "10.82.0.10") {
		t.Fatal("container connected to the network cannot ping")
	}
	e.mustDocker("network", "disconnect", web, other)
	if _, err := e.docker("exec", other, "ping", "-c1", "-W1", "10.82.0.10"); err == nil {
		t.Fatal("disconnected container still reaches the network")
	}

	// The plugin restarted (SIGKILL) while containers run: traffic goes on and
	// later docker run works.
	ping := exec.Command("/usr/bin/docker", "-H", "unix://"+e.dk.Socket(), "exec", web2, "ping", "-c", "100", "-i", "0.05", "-W", "1", "10.82.0.10")
	var pingOut bytes.Buffer
	ping.Stdout = &pingOut
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	e.d.stop(syscall.SIGKILL)
	e.d.start()
	if err := ping.Wait(); err != nil || !strings.Contains(pingOut.String(), " 0% packet loss") {
		t.Fatalf("ping across the plugin restart: %v\n%s", err, pingOut.String())
	}
	web3 := e.name + "-web3"
	e.run(web3, web)
	if !e.ping(web3, "10.82.0.10") {
		t.Fatal("docker run after the plugin restart: no connectivity")
	}

	// Bad input: netplugin's own message, nothing allocated.
	before := e.allocated()
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"network", "create", "-d", e.name, "--ipam-driver", e.name, "--subnet", "10.82.2.0/24", "-o", "bogus=1", e.name + "-bad1"}, "unknown option -o bogus"},
		{[]string{"network", "create", "-d", e.name, "--ipam-driver", e.name, "--subnet", "10.82.0.0/16", "-o", "tenant=" + e.name, e.name + "-bad2"}, "overlaps"},
		{[]string{"network", "create", "-d", e.name, "--ipam-driver", e.name, "--subnet", "10.82.3.0/24", "-o", "tag=5000", e.name + "-bad3"}, "out of range"},
		{[]string{"network", "create", "-d", e.name, "--ipam-driver", e.name, "--subnet", "10.82.4.0/24", "-o", "tag=200", e.name + "-bad4"}, "taken"},
		{[]string{"run", "--rm", "--network", web, "--ip", "10.82.0.10", e.dk.Image, "true"}, "already used"},
	} {
		out, err := e.docker(c.args...)
		if err != nil {
			out += err.Error()
		}
		if err == nil || !strings.Contains(out, c.msg) {
			t.Fatalf("docker %s: want an error containing %q, got %v: %s", strings.Join(c.args, " "), c.msg, err, out)
		}
	}
	if after := e.allocated(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("rejected requests changed the allocations:\n%v\n%v", before, after)
	}

	// docker rm -f and docker network rm leave no link and no IP behind.
	for _, c := range []string{web1, web2, web3, other} {
		e.mustDocker("rm", "-f", c)
	}
	e.mustDocker("network", "rm", web, db)
	e.waitNoLeaks()
	if out, err := exec.Command(bins+"/netdcli", "-etcd-url", e.d.etcdURL, "-oper", "get", "-construct", "network", "-tenant", e.name, web).CombinedOutput(); err == nil {
		t.Fatalf("network made by Docker outlived its Docker network: %s", out)
	}
}
