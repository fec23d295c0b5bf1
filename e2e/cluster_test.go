package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/nstest"
)

// enabled: the system tests run only when asked for (make e2e), as root.
var enabled = os.Getenv("NETPLUGIN_E2E") != "" && os.Geteuid() == 0

var (
	repo string // the repository root, where scripts/cluster lives
	bins string // netplugin and netdcli, built once for every cluster of the run

	sharedMu  sync.Mutex
	shared    *cluster // the fleet of the tests that leave it as they found it
	sharedErr error
)

func TestMain(m *testing.M) {
	if !enabled {
		os.Exit(m.Run()) // every test skips
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	repo = filepath.Dir(wd)
	if bins, err = os.MkdirTemp("", "npe-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, pkg := range []string{"./netplugin", "./netdcli"} {
		cmd := exec.Command("go", "build", "-o", bins+"/", pkg)
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if shared != nil {
		if out, err := shared.script(context.Background(), "down").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "shared cluster down: %v\n%s", err, out)
			code = 1
		}
	}
	os.RemoveAll(bins)
	os.Exit(code)
}

// requireE2E skips a test outside make e2e.
func requireE2E(t *testing.T) {
	t.Helper()
	if !enabled {
		t.Skip("system test: run by make e2e (NETPLUGIN_E2E=1, as root)")
	}
	nstest.RequireRoot(t)
}

// cluster is one fleet made by scripts/cluster in its own directory.
type cluster struct {
	dir    string
	n      int
	prefix string   // of its namespace names: PREFIX-h1 ... PREFIX-sw
	env    []string // what its agents were started with (NP_AGENT_ARGS...)
	upTime time.Duration
}

// up brings a fleet of n hosts up; env adds variables for scripts/cluster
// (NP_AGENT_ARGS, NP_LEASE_TTL, ...).
func up(n int, env ...string) (*cluster, error) {
	dir, err := os.MkdirTemp("/tmp", "npe-")
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, n: n, env: env}
	start := time.Now()
	out, err := c.script(context.Background(), "up", "-n", fmt.Sprint(n)).CombinedOutput()
	c.upTime = time.Since(start)
	if err != nil {
		// up cleans up after itself when it fails; down makes sure.
		_ = c.script(context.Background(), "down").Run()
		return nil, fmt.Errorf("scripts/cluster up -n %d: %w\n%s", n, err, out)
	}
	env2, err := os.ReadFile(filepath.Join(dir, "cluster.env"))
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(env2), "\n") {
		if v, ok := strings.CutPrefix(l, "PREFIX="); ok {
			c.prefix = v
		}
	}
	return c, nil
}

// newCluster is a fleet of the test's own, down at its end.
func newCluster(t *testing.T, n int, env ...string) *cluster {
	t.Helper()
	requireE2E(t)
	c, err := up(n, env...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d hosts up in %v", n, c.upTime.Round(100*time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs(t)
		}
		start := time.Now()
		if out, err := c.script(context.Background(), "down").CombinedOutput(); err != nil {
			t.Errorf("scripts/cluster down: %v\n%s", err, out)
		}
		t.Logf("down in %v", time.Since(start).Round(100*time.Millisecond))
	})
	return c
}

// sharedCluster is the 3-host fleet of the tests that leave it as they found it.
func sharedCluster(t *testing.T) *cluster {
	t.Helper()
	requireE2E(t)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = up(3)
		if sharedErr == nil {
			t.Logf("shared cluster: 3 hosts up in %v", shared.upTime.Round(100*time.Millisecond))
		}
	}
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			shared.dumpLogs(t)
		}
	})
	return shared
}

func (c *cluster) hosts() []string {
	out := make([]string, c.n)
	for i := range out {
		out[i] = fmt.Sprintf("h%d", i+1)
	}
	return out
}

// ns is the network namespace of host h.
func (c *cluster) ns(h string) string { return c.prefix + "-" + h }

// vtep is the underlay address of host h's tunnels.
func (c *cluster) vtep(h string) string { return "172.30.1." + strings.TrimPrefix(h, "h") }

func (c *cluster) script(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(repo, "scripts", "cluster"), args...)
	cmd.Env = append(append(os.Environ(), "NP_CLUSTER_DIR="+c.dir, "NP_CLUSTER_BIN="+bins), c.env...)
	cmd.Dir = repo
	return cmd
}

// try runs scripts/cluster ARGS and returns its combined output.
func (c *cluster) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := c.script(ctx, args...).CombinedOutput()
	return string(out), err
}

// run is try that fails the test.
func (c *cluster) run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.try(args...)
	if err != nil {
		t.Fatalf("scripts/cluster %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// tryExec runs a command on host h and returns its stdout; stderr comes with the error.
func (c *cluster) tryExec(h string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := c.script(ctx, append([]string{"exec", h, "--"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// exec runs a command on host h and fails the test if it fails.
func (c *cluster) exec(t testing.TB, h string, args ...string) string {
	t.Helper()
	out, err := c.tryExec(h, args...)
	if err != nil {
		t.Fatalf("on %s: %s: %v\n%s", h, strings.Join(args, " "), err, out)
	}
	return out
}

// netdcli runs netdcli on host h (its etcd member, its certificates).
func (c *cluster) netdcli(t testing.TB, h string, args ...string) string {
	t.Helper()
	return c.exec(t, h, append([]string{"netdcli"}, args...)...)
}

// dumpLogs shows the end of every host's agent log, for a failed test.
func (c *cluster) dumpLogs(t testing.TB) {
	for _, h := range c.hosts() {
		for _, f := range []string{"agent/netplugin.log", "etcd.log"} {
			b, err := os.ReadFile(filepath.Join(c.dir, h, f))
			if err != nil {
				continue
			}
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			if len(lines) > 30 {
				lines = lines[len(lines)-30:]
			}
			t.Logf("%s %s:\n%s", h, f, strings.Join(lines, "\n"))
		}
	}
}
