package macvlan

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
)

func runIP(args ...string) ([]byte, error) { return exec.Command("ip", args...).CombinedOutput() }

// vlanSupported probes for 802.1Q devices in a throwaway namespace.
func vlanSupported(t *testing.T, p string) bool {
	t.Helper()
	ns := nstest.NS(t, p+"vq")
	nstest.Exec(t, ns, "ip", "link", "add", "name", "v0", "type", "veth", "peer", "name", "v1")
	_, err := runIP("-n", ns, "link", "add", "link", "v0", "name", "v0.5", "type", "vlan", "id", "5")
	return err == nil
}

// TestVLAN needs a kernel with 802.1Q: scripts/kernel-lab.sh ./drivers/macvlan/
func TestVLAN(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	p := nstest.Prefix()
	if !vlanSupported(t, p) {
		t.Skip("kernel has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q); run scripts/kernel-lab.sh ./drivers/macvlan/")
	}
	underlay(t, p, "ha", "hb")
	dA, dB := newDriver(t, p, "ha", t.TempDir()), newDriver(t, p, "hb", t.TempDir())
	// An operator's own subinterface on host a: used as it is, never deleted.
	nstest.Exec(t, p+"ha", "ip", "link", "add", "link", "up0", "name", "up0.300", "type", "vlan", "id", "300")
	nstest.Exec(t, p+"ha", "ip", "link", "set", "up0.300", "up")

	// VLANs 100 and 200 carry the same subnet: only the tag keeps them apart.
	n100 := network(p, "v100", "10.79.1.0/24", map[string]string{OptParent: "up0", OptVLAN: "100"})
	n200 := network(p, "v200", "10.79.1.0/24", map[string]string{OptParent: "up0", OptVLAN: "200"})
	n300 := network(p, "v300", "10.79.3.0/24", map[string]string{OptParent: "up0", OptVLAN: "300"})
	for i := 0; i < 2; i++ {
		for _, d := range []*Driver{dA, dB} {
			for _, n := range []core.NetworkSpec{n100, n200, n300} {
				if err := d.EnsureNetwork(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	a100 := endpoint(t, p, "a100", "10.79.1.1", "02:00:0a:4f:01:01", n100)
	b100 := endpoint(t, p, "b100", "10.79.1.2", "02:00:0a:4f:01:02", n100)
	b200 := endpoint(t, p, "b200", "10.79.1.3", "02:00:0a:4f:01:03", n200)
	a300 := endpoint(t, p, "a300", "10.79.3.1", "02:00:0a:4f:03:01", n300)
	b300 := endpoint(t, p, "b300", "10.79.3.2", "02:00:0a:4f:03:02", n300)
	mustEnsure(t, dA, a100, a300)
	mustEnsure(t, dB, b100, b200, b300)
	nstest.MustPing(t, p+"a100", "10.79.1.2")
	nstest.MustNotPing(t, p+"a100", "10.79.1.3")
	nstest.MustPing(t, p+"a300", "10.79.3.2")
	if out := nstest.Exec(t, p+"ha", "ip", "-d", "link", "show", "up0.100"); !strings.Contains(out, "alias netplugin:mvvlan:up0:100") {
		t.Fatalf("subinterface not marked as ours:\n%s", out)
	}

	// The last network and endpoint on a subinterface of ours take it along;
	// the operator's stays.
	for _, o := range []core.ObservedEndpoint{{Key: a100.Key()}, {Key: a300.Key()}} {
		if err := dA.RemoveEndpoint(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []core.NetworkSpec{n100, n200, n300} {
		if err := dA.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
			t.Fatal(err)
		}
	}
	links := strings.Join(containerLinks(t, p+"ha"), "\n")
	if strings.Contains(links, "up0.100") || strings.Contains(links, "up0.200") || !strings.Contains(links, "up0.300") {
		t.Fatalf("host a after removal:\n%s", links)
	}
	// A subinterface still used by an endpoint outlives its network record.
	if err := dB.RemoveNetwork(ctx, core.ObservedNetwork{Key: n100.Key()}); err != nil {
		t.Fatal(err)
	}
	nstest.Exec(t, p+"hb", "ip", "link", "show", "up0.100")
	nstest.MustPing(t, p+"b100", "10.79.1.2") // own address: the child is still there
	if err := dB.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: b100.Key()}); err != nil {
		t.Fatal(err)
	}
	if _, err := runIP("-n", p+"hb", "link", "show", "up0.100"); err == nil {
		t.Fatal("unused subinterface up0.100 left on host b")
	}
}
