package lab

import (
	"context"
	"os"
	"testing"

	"github.com/netplugin/netplugin/internal/nstest"
)

// TestKernelFeatures is the lab's self-test: inside the lab every link type the
// drivers rely on must work; outside it the probes only report what is missing.
func TestKernelFeatures(t *testing.T) {
	nstest.RequireRoot(t)
	ctx := context.Background()
	for _, c := range []struct {
		option string
		kind   string
		args   []string
	}{
		{"CONFIG_IPVLAN", "ipvlan", []string{"mode", "l3"}},
		{"CONFIG_VLAN_8021Q", "vlan", []string{"id", "10"}},
		{"CONFIG_MACVLAN", "macvlan", []string{"mode", "bridge"}},
	} {
		t.Run(c.kind, func(t *testing.T) {
			RequireKernel(t, c.option, ProbeLink(ctx, c.kind, c.args...))
		})
	}
	t.Run("openvswitch", func(t *testing.T) {
		_, err := os.Stat("/sys/module/openvswitch")
		RequireKernel(t, "CONFIG_OPENVSWITCH", err)
	})
}

func TestActive(t *testing.T) {
	t.Setenv(EnvVar, "1")
	if !Active() {
		t.Fatal("Active() = false with the variable set")
	}
	t.Setenv(EnvVar, "")
	if Active() {
		t.Fatal("Active() = true without the variable")
	}
}
