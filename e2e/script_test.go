package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/nstest"
)

// ourLinkName tells the names scripts/cluster gives the underlay links and
// bridges inside its namespaces: none may ever show up in the root namespace.
// (np-int and br-phy are left out: other tests make them in the root namespace.)
func ourLinkName(name string) bool {
	switch name {
	case "ctl0", "vtep0", "trk0", "par0", "br-ctl", "br-vtep", "br-trk", "br-par":
		return true
	}
	for _, k := range []string{"-ctl", "-vtep", "-trk", "-par"} {
		if h, ok := strings.CutSuffix(name, k); ok && len(h) > 1 && h[0] == 'h' && strings.Trim(h[1:], "0123456789") == "" {
			return true
		}
	}
	return false
}

// leftovers lists whatever a cluster in dir (namespaces prefix-*) left outside
// it, or ever made in the root namespace: namespaces, processes, mounts,
// links, /etc/netns entries, driver records, Docker plugin sockets, cgroups.
func leftovers(t testing.TB, dir, prefix string, hosts int) []string {
	t.Helper()
	var left []string
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			left = append(left, "namespace "+f[0])
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), dir+"/") {
			left = append(left, "process "+strings.ReplaceAll(strings.TrimSpace(string(b)), "\x00", " "))
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			left = append(left, "mount "+f[4])
		}
	}
	for name := range nstest.Links(t) {
		if ourLinkName(name) {
			left = append(left, "root namespace link "+name)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		left = append(left, "directory "+dir)
	}
	if m, _ := filepath.Glob("/etc/netns/" + prefix + "-*"); len(m) > 0 {
		left = append(left, m...)
	}
	for i := 1; i <= hosts; i++ {
		h := fmt.Sprintf("h%d", i)
		if m, _ := filepath.Glob("/run/netplugin/*/" + h); len(m) > 0 {
			left = append(left, m...)
		}
		sum := sha256.Sum256([]byte(filepath.Join(dir, h, "docker")))
		cg := "np-dockerd-" + hex.EncodeToString(sum[:])[:12]
		if out, _ := exec.Command("find", "/sys/fs/cgroup", "-maxdepth", "8", "-type", "d", "-name", cg).Output(); len(out) > 0 {
			left = append(left, "cgroup "+strings.TrimSpace(string(out)))
		}
	}
	return left
}

// TestSixHostsUpAndDown: `scripts/cluster up -n 6` makes six hosts whose
// endpoints on one OVS VXLAN network all reach each other; while it is up
// the root namespace holds none of its links; `down` leaves nothing behind.
func TestSixHostsUpAndDown(t *testing.T) {
	requireE2E(t)
	c, err := up(6)
	if err != nil {
		t.Fatal(err)
	}
	downed := false
	t.Cleanup(func() {
		if !downed {
			if t.Failed() {
				c.dumpLogs(t)
			}
			_, _ = c.try("down")
		}
	})
	t.Logf("6 hosts up in %v", c.upTime.Round(100*time.Millisecond))
	for name := range nstest.Links(t) {
		if ourLinkName(name) {
			t.Fatalf("link %s in the root namespace", name)
		}
	}
	// Every host listed with its etcd member, OVS, dockerd and agent up.
	rows := map[string]int{}
	for _, l := range strings.Split(c.run(t, "status"), "\n") {
		if f := strings.Fields(l); len(f) >= 7 && strings.Join(f[3:7], " ") == "up up up up" {
			rows[f[0]]++
		}
	}
	for _, h := range c.hosts() {
		if rows[h] != 1 {
			t.Fatalf("scripts/cluster status does not show %s with every daemon up:\n%s", h, c.run(t, "status"))
		}
	}
	p := nstest.Prefix()
	eps := c.vxlanNet(t, p, 70, false)
	if len(eps) != 6 {
		t.Fatalf("%d endpoints", len(eps))
	}
	start := time.Now()
	out, err := c.try("down")
	if err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	downed = true
	t.Logf("6 hosts down in %v", time.Since(start).Round(100*time.Millisecond))
	if left := leftovers(t, c.dir, c.prefix, 6); len(left) > 0 {
		t.Fatalf("left after down:\n%s", strings.Join(left, "\n"))
	}
}

// TestDownAfterUpCrashed: `scripts/cluster up` killed with SIGKILL half-way
// (daemons of some hosts running, others not started) leaves a mess that
// `down` removes entirely.
func TestDownAfterUpCrashed(t *testing.T) {
	requireE2E(t)
	dir, err := os.MkdirTemp("/tmp", "npe-")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{dir: dir, n: 3}
	t.Cleanup(func() { _, _ = c.try("down") })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := c.script(ctx, "up", "-n", "3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Half-way: the first dockerd is starting, so etcd members and OVS run.
	waitFor(t, 2*time.Minute, "a dockerd of the cluster starting", func() bool {
		m, _ := filepath.Glob(filepath.Join(dir, "h*", "docker", "containerd.pid"))
		return len(m) > 0
	})
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
	b, err := os.ReadFile(filepath.Join(dir, "cluster.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PREFIX="); ok {
			c.prefix = v
		}
	}
	if left := leftovers(t, dir, c.prefix, 3); len(left) == 0 {
		t.Fatal("the crashed up left nothing to clean: the test did not crash it half-way")
	} else {
		t.Logf("%d things left by the crash, e.g. %s", len(left), left[0])
	}
	start := time.Now()
	if out, err := c.try("down"); err != nil {
		t.Fatalf("down after the crash: %v\n%s", err, out)
	}
	t.Logf("down after a crashed up in %v", time.Since(start).Round(100*time.Millisecond))
	if left := leftovers(t, dir, c.prefix, 3); len(left) > 0 {
		t.Fatalf("left after down:\n%s", strings.Join(left, "\n"))
	}
}
