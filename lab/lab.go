// Package lab lets tests tell whether they run inside the kernel lab
// (scripts/kernel-lab.sh: Debian's stock kernel under qemu) and probe the
// running kernel for a link type. Outside the lab a test whose kernel feature
// is missing skips with a one-line reason naming the kernel option; inside the
// lab the same gap is a failure, because the lab exists to have it.
package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/nstest"
)

// EnvVar is set to "1" by the lab's init for every test binary it runs.
const EnvVar = "NETPLUGIN_KERNEL_LAB"

// Active reports whether the test runs inside the kernel lab.
func Active() bool { return os.Getenv(EnvVar) == "1" }

// RequireKernel skips t when probeErr is not nil (the running kernel lacks
// option, e.g. "CONFIG_IPVLAN") — or fails it inside the lab.
func RequireKernel(t testing.TB, option string, probeErr error) {
	t.Helper()
	if probeErr == nil {
		return
	}
	if Active() {
		t.Fatalf("kernel lab: %s expected but missing: %v", option, probeErr)
	}
	t.Skipf("kernel %s lacks %s (run scripts/kernel-lab.sh): %v", kernelRelease(), option, probeErr)
}

// ProbeLink reports whether the kernel can create a link of the given kind
// (ip link's "type" argument, followed by args) on top of a veth. It works in a
// throwaway namespace, so it neither needs nor touches any host interface.
// It needs root and iproute2.
func ProbeLink(ctx context.Context, kind string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ns := nstest.Prefix() + "probe"
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	// Deleting the namespace deletes every link made inside it.
	defer func() { _ = exec.Command("ip", "netns", "del", ns).Run() }()
	steps := [][]string{
		{"link", "add", "p0", "type", "veth", "peer", "name", "p1"},
		append([]string{"link", "add", "link", "p0", "name", "probe0", "type", kind}, args...),
	}
	for _, s := range steps {
		cmd := exec.CommandContext(ctx, "ip", append([]string{"-n", ns}, s...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(s, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "(unknown)"
	}
	return strings.TrimSpace(string(b))
}
