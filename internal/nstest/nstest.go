// Package nstest makes throwaway network namespaces for tests and proves
// connectivity with real traffic inside them.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/internal/nl"
)

// RequireRoot skips tests that need CAP_NET_ADMIN.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip: apt-get install iproute2")
	}
}

// Prefix returns a short unique prefix so that parallel or leftover runs never collide.
func Prefix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "npt" + hex.EncodeToString(b)
}

// NS creates a named namespace (/var/run/netns/<name>) with lo up, deleted at cleanup.
func NS(t testing.TB, name string) string {
	t.Helper()
	RequireRoot(t)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	Exec(t, name, "ip", "link", "set", "lo", "up")
	return name
}

// Path is the nsfs path of a named namespace.
func Path(name string) string { return "/var/run/netns/" + name }

// Exec runs a command inside a namespace and fails the test on error.
func Exec(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Ping reports whether ns reaches ip (one echo, one second).
func Ping(ns, ip string) bool {
	return exec.Command("ip", "netns", "exec", ns, "ping", "-c1", "-W1", ip).Run() == nil
}

// MustPing fails unless ns reaches ip within a few tries (ARP may need a moment).
func MustPing(t testing.TB, ns, ip string) {
	t.Helper()
	for i := 0; i < 5; i++ {
		if Ping(ns, ip) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s cannot reach %s", ns, ip)
}

// MustNotPing fails if ns reaches ip.
func MustNotPing(t testing.TB, ns, ip string) {
	t.Helper()
	if Ping(ns, ip) {
		t.Fatalf("%s reaches %s but must be isolated from it", ns, ip)
	}
}

// Links returns the link names of the host namespace, for leak checks.
func Links(t testing.TB) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	m := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			m[name] = true
		}
	}
	return m
}

// MarkedLinks returns the host-namespace links marked as owned by the agent of
// host (alias "netplugin:<kind>@<host>:..."): a leak check that counts only
// what one test's agent made, whatever other tests run beside it.
func MarkedLinks(t testing.TB, host string) []string {
	t.Helper()
	// Retried when the dump is interrupted: parallel test packages make and
	// remove links all the time.
	links, err := nl.LinkList(nil)
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	var out []string
	for _, l := range links {
		if a := l.Attrs().Alias; strings.HasPrefix(a, "netplugin:") && strings.Contains(a, "@"+host+":") {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// RemoveMarkedAtCleanup deletes, when the test ends, every host-namespace link
// still marked as owned by host's agent: a test that fails half-way must not
// leave bridges whose addresses break the next run. Register it before the
// agent is started, so that it runs after the agent stopped.
func RemoveMarkedAtCleanup(t testing.TB, host string) {
	t.Cleanup(func() {
		for _, name := range MarkedLinks(t, host) {
			if l, err := netlink.LinkByName(name); err == nil {
				_ = netlink.LinkDel(l)
			}
		}
	})
}
