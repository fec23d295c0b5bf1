package testenv

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// assertGone checks that nothing of the daemon in dir survives: no
// directory, mount, process or cgroup.
func assertGone(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists (stat: %v)", dir, err)
	}
	if mps := mountsUnder(dir); len(mps) > 0 {
		t.Errorf("mounts left under %s: %v", dir, mps)
	}
	if pids := pidsNaming(dir); len(pids) > 0 {
		t.Errorf("processes left naming %s: %v", dir, pids)
	}
	if cgs := findCgroups(filepath.Base(dir)); len(cgs) > 0 {
		t.Errorf("cgroups left: %v", cgs)
	}
}

func TestBusyboxRootfs(t *testing.T) {
	bb, reason := findStaticBusybox()
	if reason != "" {
		t.Skip(reason)
	}
	b, err := busyboxRootfs(context.Background(), bb)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries[h.Name] = h
	}
	if h := entries["bin/busybox"]; h == nil || h.Size == 0 || h.Mode&0o111 == 0 {
		t.Errorf("bin/busybox missing or not executable: %+v", h)
	}
	for _, applet := range []string{"sh", "ping", "sleep", "ip", "true", "cat", "nc", "ifconfig", "route", "hostname"} {
		if h := entries["bin/"+applet]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s: want symlink to busybox, got %+v", applet, h)
		}
	}
	if h := entries["tmp/"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp/: want mode 1777, got %+v", h)
	}
	// Deterministic, so repeated imports give the same layer.
	b2, _ := busyboxRootfs(context.Background(), bb)
	if !bytes.Equal(b, b2) {
		t.Error("rootfs tar differs between two builds")
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/tmp/a\040b\134c`); got != `/tmp/a b\c` {
		t.Errorf("got %q", got)
	}
}

// TestTwoPrivateDaemons starts two daemons side by side, uses both, and
// checks that their teardown leaves nothing behind.
func TestTwoPrivateDaemons(t *testing.T) {
	if os.Getenv(EnvDockerHost) != "" {
		t.Skipf("%s is set: this test needs private daemons", EnvDockerHost)
	}
	var dirs []string
	t.Run("use", func(t *testing.T) {
		a, b := StartDocker(t), StartDocker(t)
		if a.own == nil || b.own == nil {
			t.Fatal("StartDocker did not start private daemons")
		}
		dirs = []string{a.own.dir, b.own.dir}
		if a.Socket() == b.Socket() {
			t.Fatalf("both daemons on %s", a.Socket())
		}
		for _, s := range []string{a.Socket(), b.Socket()} {
			if len(s) >= sunPathMax {
				t.Errorf("socket path %s is %d bytes", s, len(s))
			}
		}
		// The same container name in both: they share nothing.
		idA := a.RunContainer(t, "twin")
		idB := b.RunContainer(t, "twin")
		if idA == idB {
			t.Fatal("same container ID from two daemons")
		}
		for _, d := range []*Docker{a, b} {
			out, err := d.CLI(t, "ps", "--format", "{{.Names}}")
			if err != nil || out != "twin" {
				t.Errorf("%s: docker ps = %q, %v; want only twin", d.Socket(), out, err)
			}
			// --network none: only loopback inside.
			out, err = d.CLI(t, "exec", "twin", "ip", "-o", "link")
			if err != nil {
				t.Fatalf("exec ip link: %v", err)
			}
			if strings.Contains(out, "eth0") || !strings.Contains(out, "lo:") {
				t.Errorf("container links: %q; want lo only", out)
			}
		}
		// A container left running here must be removed by teardown.
		if _, err := a.CLI(t, "run", "-d", "--network", "none", "--name", "orphan", a.Image, "sleep", "1d"); err != nil {
			t.Fatal(err)
		}
		if mps := mountsUnder(dirs[0]); len(mps) == 0 {
			t.Error("no mounts under a running daemon's dir: is the check looking in the right place?")
		}
	})
	if len(dirs) == 0 {
		return // skipped
	}
	for _, dir := range dirs {
		assertGone(t, dir)
	}
}

func TestCLIError(t *testing.T) {
	d := StartDocker(t)
	_, err := d.CLI(t, "inspect", "np-no-such-container")
	if err == nil {
		t.Fatal("inspect of a missing container succeeded")
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "No such") {
		t.Errorf("CLI error %q: want one line with the CLI's stderr", msg)
	}
}

// TestReuseViaEnv points NETPLUGIN_TEST_DOCKER_HOST at a private daemon
// and checks StartDocker reuses it, re-importing the image if it is gone.
func TestReuseViaEnv(t *testing.T) {
	if os.Getenv(EnvDockerHost) != "" {
		t.Skipf("%s is set: this test needs a private daemon", EnvDockerHost)
	}
	host := StartDocker(t)
	if _, err := host.CLI(t, "rmi", host.Image); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvDockerHost, "unix://"+host.Socket())
	start := time.Now()
	d := StartDocker(t)
	if d.own != nil || d.Socket() != host.Socket() {
		t.Fatalf("StartDocker started a daemon (own=%v, socket %s) instead of reusing %s", d.own != nil, d.Socket(), host.Socket())
	}
	t.Logf("attach + image import took %v", time.Since(start))
	if _, err := d.CLI(t, "image", "inspect", d.Image); err != nil {
		t.Errorf("image not re-imported: %v", err)
	}
	d.RunContainer(t, "reuse")
}

// TestSweepAfterCrash starts a daemon in a child process that exits
// without cleaning up, then checks that sweepStale removes what it left.
func TestSweepAfterCrash(t *testing.T) {
	if os.Getenv("NP_TESTENV_CRASH_CHILD") != "" {
		crashChild()
		return
	}
	if os.Getenv(EnvDockerHost) != "" {
		t.Skipf("%s is set: this test needs private daemons", EnvDockerHost)
	}
	if reason := ensurePrereqs(context.Background(), t.Logf); reason != "" {
		t.Skip(reason)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSweepAfterCrash$")
	cmd.Env = append(os.Environ(), "NP_TESTENV_CRASH_CHILD=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crash child: %v", err)
	}
	var dir string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "DIR="); ok {
			dir = d
		}
	}
	if dir == "" {
		t.Fatalf("crash child printed no DIR: %q", out)
	}
	t.Cleanup(func() { _ = forceCleanup(dir) }) // in case the sweep fails
	if len(pidsNaming(dir)) == 0 {
		t.Fatal("crash child left no processes: nothing to test")
	}
	socks := shimSockets(dir)
	if len(socks) == 0 {
		t.Fatal("crash child left no shim: nothing to test")
	}
	for _, s := range socks {
		if _, err := os.Stat(s); err != nil {
			t.Errorf("shim socket: %v (has containerd's naming changed?)", err)
		}
	}
	sweepStale(t.Logf)
	assertGone(t, dir)
	for _, s := range socks {
		if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("shim socket %s left behind", s)
		}
	}
}

// crashChild starts a daemon with a running container and exits as a
// panicking or timed-out test binary would: without any cleanup.
func crashChild() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := startDaemon(ctx, PrivateOptions{}, func(string, ...any) {})
	if err == nil {
		dk := &Docker{Image: DefaultImage, socket: d.socket, cli: d.cli}
		if err = dk.ensureImage(ctx); err == nil {
			_, err = dk.run(ctx, nil, "run", "-d", "--network", "none", "--name", "crashed", dk.Image, "sleep", "1d")
		}
		fmt.Printf("DIR=%s\n", d.dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}
