package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/state"
)

// bins holds the binaries under test, built once by TestMain: the end-to-end
// tests run them as separate processes, as a user would.
var bins string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "netplugin-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, pkg := range []string{".", "../netdcli"} {
		if out, err := exec.Command("go", "build", "-o", dir+"/", pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	bins = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is a netplugin process with its embedded etcd.
type daemon struct {
	t       *testing.T
	args    []string
	cmd     *exec.Cmd
	etcdURL string
	listen  string
	log     *bytes.Buffer
}

func newDaemon(t *testing.T, host string, extra ...string) *daemon {
	d := &daemon{t: t,
		etcdURL: fmt.Sprintf("https://127.0.0.1:%d", etcdtest.FreePort(t)),
		listen:  fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))}
	d.args = append([]string{"--data-dir", t.TempDir(), "--etcd-client-url", d.etcdURL,
		"--etcd-peer-url", fmt.Sprintf("https://127.0.0.1:%d", etcdtest.FreePort(t)),
		"--host-label", host, "--listen", d.listen, "--resync", "1s", "--docker-plugin", ""}, extra...)
	t.Cleanup(func() {
		d.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("netplugin log:\n%s", d.log)
		}
		// The drivers' records of this host label (empty once its endpoints are gone).
		for _, drv := range []string{"macvlan", "ipvlan", "hostnic"} {
			_ = os.RemoveAll(stateDir(state.DefaultRunDir, drv, host))
		}
		for _, f := range []string{".lease", ".lock"} {
			_ = os.Remove(filepath.Join(state.DefaultRunDir, "agent", host+f))
		}
	})
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	d.log = &bytes.Buffer{}
	d.cmd = exec.Command(filepath.Join(bins, "netplugin"), d.args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := http.Get("http://" + d.listen + "/healthz")
		if err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("netplugin not healthy after 20s:\n%s", d.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemon) stop(sig syscall.Signal) {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(sig)
	_ = d.cmd.Wait()
	d.cmd = nil
}

// store is a client of d's embedded etcd, with the certificates d published.
func (d *daemon) store() *state.Store {
	d.t.Helper()
	eps, files := state.ResolveTLS(state.DefaultRunDir, []string{d.etcdURL}, state.TLSFiles{})
	s, err := state.Connect(context.Background(), eps, 5*time.Second, etcdtest.Log(d.t), state.WithTLS(files))
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { _ = s.Close() })
	return s
}

func (d *daemon) netdcli(args ...string) string {
	d.t.Helper()
	out, err := exec.Command(filepath.Join(bins, "netdcli"), append([]string{"-etcd-url", d.etcdURL}, args...)...).CombinedOutput()
	if err != nil {
		d.t.Fatalf("netdcli %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// endpointView is what `netdcli -json get` prints of an endpoint.
type endpointView struct {
	core.Endpoint
	Status map[string]core.EndpointStatus `json:"status"`
}

// endpoints reads every endpoint of tenant with its status through netdcli -json.
func (d *daemon) endpoints(tenant string) map[string]endpointView {
	d.t.Helper()
	var views []endpointView
	if err := json.Unmarshal([]byte(d.netdcli("-oper", "get", "-construct", "endpoint", "-tenant", tenant, "-json")), &views); err != nil {
		d.t.Fatal(err)
	}
	out := map[string]endpointView{}
	for _, v := range views {
		out[v.Name] = v
	}
	return out
}

// waitUp waits until n endpoints of tenant are up on host and returns their ifindexes.
func (d *daemon) waitUp(tenant, host string, n int) map[string]int {
	d.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		idx := map[string]int{}
		for name, v := range d.endpoints(tenant) {
			if st := v.Status[host]; st.State == core.StateUp {
				idx[name] = st.IfIndex
			}
		}
		if len(idx) == n {
			return idx
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%d of %d endpoints up after 60s", len(idx), n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestSIGKILLRestartIsInvisible: 50 attached endpoints, the agent killed with
// SIGKILL and restarted; the same links stay, a ping between two containers
// never loses a packet, status returns to up, nothing is duplicated or leaked.
func TestSIGKILLRestartIsInvisible(t *testing.T) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	host := p + "-host"
	d := newDaemon(t, host)
	d.start()
	const n = 50
	var eps []string
	for i := 0; i < n; i++ {
		ns := nstest.NS(t, fmt.Sprintf("%s-%d", p, i))
		eps = append(eps, fmt.Sprintf(`{"name":"e%d","netns":%q,"host":%q}`, i, ns, host))
	}
	doc := fmt.Sprintf(`{"tenants":[{"name":%q,"networks":[{"name":"net","subnet":"10.80.0.0/24","gateway":"10.80.0.254","endpoints":[%s]}]}]}`,
		p, strings.Join(eps, ","))
	cmd := exec.Command(filepath.Join(bins, "netdcli"), "-etcd-url", d.etcdURL, "-cfg", "-")
	cmd.Stdin = strings.NewReader(doc)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apply: %v %s", err, out)
	}
	t.Cleanup(func() { // remove the endpoints through the product, then check for leaks
		if d.cmd == nil {
			return
		}
		cmd := exec.Command(filepath.Join(bins, "netdcli"), "-etcd-url", d.etcdURL, "-cfg", "-")
		cmd.Stdin = strings.NewReader(`{"tenants":[]}`)
		_ = cmd.Run()
	})
	before := d.waitUp(p, host, n)
	links := len(nstest.MarkedLinks(t, host))

	ping := exec.Command("ip", "netns", "exec", p+"-0", "ping", "-c", "150", "-i", "0.02", "-W", "1", "10.80.0.2")
	var pingOut bytes.Buffer
	ping.Stdout = &pingOut
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	d.stop(syscall.SIGKILL)
	d.start()
	after := d.waitUp(p, host, n)
	if err := ping.Wait(); err != nil || !strings.Contains(pingOut.String(), " 0% packet loss") {
		t.Fatalf("ping across the restart: %v\n%s", err, pingOut.String())
	}
	for name, idx := range before {
		if after[name] != idx {
			t.Fatalf("%s: ifindex %d before the crash, %d after: the link was recreated", name, idx, after[name])
		}
	}
	if got := len(nstest.MarkedLinks(t, host)); got != links {
		t.Fatalf("%d netplugin links after restart, %d before", got, links)
	}

	// Delete everything through the product: no link is left.
	cmd = exec.Command(filepath.Join(bins, "netdcli"), "-etcd-url", d.etcdURL, "-cfg", "-")
	cmd.Stdin = strings.NewReader(`{"tenants":[]}`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("delete all: %v %s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for hasOurs(t, p) {
		if time.Now().After(deadline) {
			t.Fatal("links left after deleting every endpoint")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hasOurs reports whether any link of this test's endpoints or bridge remains.
func hasOurs(t *testing.T, p string) bool {
	links := nstest.Links(t)
	if links[linuxbridge.BridgeName(p+"-host", p+"/net")] {
		return true
	}
	for i := 0; i < 50; i++ {
		if links[core.HostIfName(fmt.Sprintf("%s/e%d", p, i))] {
			return true
		}
	}
	return false
}
