package ovstest_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/netplugin/netplugin/internal/ovstest"
)

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %s: %v", path, err)
	}
	return pid
}

func alive(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// Everything a subtest's instance started is gone once the subtest is over.
func TestCleanupRemovesEverything(t *testing.T) {
	var dir, ns string
	var pids []int
	t.Run("instance", func(t *testing.T) {
		ns = ovstest.NewNetns(t)
		inst := ovstest.Start(t, ovstest.WithVswitchd(), ovstest.InNetns(ns))
		dir = inst.Dir
		inst.Vsctl(t, "add-br", "br0", "--", "set", "Bridge", "br0", "datapath_type=netdev")
		if got := inst.Vsctl(t, "list-br"); got != "br0" {
			t.Fatalf("list-br = %q", got)
		}
		for _, name := range []string{"ovsdb-server.pid", "ovs-vswitchd.pid"} {
			pids = append(pids, readPid(t, filepath.Join(dir, name)))
		}
	})
	if t.Failed() || dir == "" {
		return // skipped or failed: nothing to check
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d still running after cleanup", pid)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists after cleanup (%v)", dir, err)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), ns) {
		t.Errorf("namespace %s still exists after cleanup", ns)
	}
}

// Instances are independent: same names, separate databases.
func TestSideBySide(t *testing.T) {
	t.Parallel()
	a, b := ovstest.Start(t), ovstest.Start(t)
	if a.Dir == b.Dir || a.DBSock == b.DBSock {
		t.Fatal("instances share a directory")
	}
	a.Vsctl(t, "add-br", "br0")
	if got := b.Vsctl(t, "list-br"); got != "" {
		t.Errorf("second instance sees bridges %q", got)
	}
	if _, err := b.TryVsctl("del-br", "br0"); err == nil {
		t.Error("TryVsctl del-br of a missing bridge succeeded")
	}
}
