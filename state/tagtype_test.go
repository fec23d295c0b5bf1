package state_test

import (
	"context"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// A cluster whose global default tag type is vxlan makes every network that
// names no tag type a VXLAN network with a VNI from the VXLAN range: through
// CreateNetwork (netdcli, the Docker plugin) and through -cfg documents, also
// one that sets the default itself.
func TestDefaultTagType(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	n, err := s.CreateNetwork(ctx, core.Network{Name: "plain", Subnet: "10.7.0.0/24"})
	if err != nil || n.Encap != core.EncapVLAN {
		t.Fatalf("no default set: %+v %v", n, err)
	}
	before := etcdtest.Dump(t, s)
	if _, err := s.SetGlobal(ctx, core.Global{DefaultTagType: "gre"}); err == nil || !strings.Contains(err.Error(), `"gre"`) {
		t.Fatalf("bad default tag type: %v", err)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("a refused global changed the store")
	}
	if g, err := s.SetGlobal(ctx, core.Global{DefaultTagType: core.EncapVXLAN, VXLANs: "5000-5010"}); err != nil || g.DefaultTagType != core.EncapVXLAN {
		t.Fatalf("set default: %+v %v", g, err)
	}
	// Another setting later keeps the default.
	if g, err := s.SetGlobal(ctx, core.Global{SubnetLen: 25}); err != nil || g.DefaultTagType != core.EncapVXLAN {
		t.Fatalf("default lost: %+v %v", g, err)
	}
	n, err = s.CreateNetwork(ctx, core.Network{Name: "spans", Subnet: "10.7.1.0/24"})
	if err != nil || n.Encap != core.EncapVXLAN || n.Tag != 5000 {
		t.Fatalf("network under the vxlan default: %+v %v", n, err)
	}
	// A network's own tag type wins.
	if n, err = s.CreateNetwork(ctx, core.Network{Name: "local", Encap: core.EncapVLAN, Subnet: "10.7.2.0/24"}); err != nil || n.Encap != core.EncapVLAN {
		t.Fatalf("explicit vlan: %+v %v", n, err)
	}

	// A document that sets the default and names a VNI above the VLAN range
	// in the same apply: checked against the default it sets.
	if _, err := s.SetGlobal(ctx, core.Global{DefaultTagType: core.EncapVLAN, VXLANs: "1-16777215"}); err != nil {
		t.Fatal(err)
	}
	d, err := state.ParseDocument(strings.NewReader(`{"global":{"defaultTagType":"vxlan"},
	  "tenants":[{"name":"default","networks":[{"name":"doc","subnet":"10.7.3.0/24","tag":70000}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, d, "h1"); err != nil {
		t.Fatal(err)
	}
	if n, _, err := s.GetNetwork(ctx, "default", "doc"); err != nil || n.Encap != core.EncapVXLAN || n.Tag != 70000 {
		t.Fatalf("network of the document: %+v %v", n, err)
	}
}
