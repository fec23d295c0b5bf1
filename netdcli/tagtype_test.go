package main

import (
	"strings"
	"testing"

	"github.com/netplugin/netplugin/internal/etcdtest"
)

// `-construct global -tag-type vxlan` makes plain networks VXLAN networks; a
// bad tag type is one line on stderr and changes nothing.
func TestGlobalDefaultTagType(t *testing.T) {
	c, s := newCLI(t)
	before := etcdtest.Dump(t, s)
	_, errOut, err := c.run("-oper", "create", "-construct", "global", "-tag-type", "gre")
	if err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, `"gre"`) {
		t.Fatalf("bad tag type: %v %q", err, errOut)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("a refused global changed the store")
	}
	out := c.ok("-oper", "create", "-construct", "global", "-tag-type", "vxlan")
	if !strings.Contains(out, "TAG TYPE") || !strings.Contains(out, "vxlan") {
		t.Fatalf("global:\n%s", out)
	}
	out = c.ok("-oper", "create", "-construct", "network", "-subnet", "10.9.0.0/24", "spans")
	if !strings.Contains(out, " vxlan ") {
		t.Fatalf("plain network under the vxlan default:\n%s", out)
	}
}
