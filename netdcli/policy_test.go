package main

import (
	"strings"
	"testing"

	"github.com/netplugin/netplugin/internal/etcdtest"
)

// TestPolicyCommands: the commands, get of each construct, and every
// bad input a one-line error that changes nothing.
func TestPolicyCommands(t *testing.T) {
	c, s := newCLI(t)
	c.ok("-oper", "create", "-construct", "tenant", "t1")
	c.ok("-oper", "create", "-construct", "network", "-tenant", "t1", "-subnet", "10.4.1.0/24", "n1")
	c.ok("-oper", "create", "-construct", "network", "-tenant", "t1", "-driver", "macvlan", "-parent", "eth0", "-subnet", "10.4.2.0/24", "mv")
	c.ok("-oper", "create", "-construct", "policy", "-tenant", "t1", "db-in")
	c.ok("-oper", "create", "-construct", "group", "-tenant", "t1", "-net-id", "n1", "web")
	out := c.ok("-oper", "create", "-construct", "rule", "-tenant", "t1", "-policy", "db-in", "-priority", "10", "-direction", "in",
		"-from-group", "web", "-protocol", "tcp", "-port", "5432", "-action", "allow", "web-to-db")
	if !strings.Contains(out, "web-to-db") || !strings.Contains(out, "group web") || !strings.Contains(out, "5432") {
		t.Fatalf("create rule:\n%s", out)
	}
	out = c.ok("-oper", "create", "-construct", "netprofile", "-tenant", "t1", "-bandwidth", "10mbit", "-burst", "64kb", "-dscp", "46", "gold")
	if !strings.Contains(out, "65536") || !strings.Contains(out, "46") {
		t.Fatalf("create netprofile:\n%s", out)
	}
	c.ok("-oper", "create", "-construct", "group", "-tenant", "t1", "-net-id", "n1", "-policy", "db-in", "-netprofile", "gold", "db")
	c.ok("-oper", "create", "-construct", "endpoint", "-tenant", "t1", "-net-id", "n1", "-group", "db", "-host", "h1", "-netns", "x", "db1")
	out = c.ok("-oper", "get", "-construct", "group", "-tenant", "t1", "db")
	if !strings.Contains(out, "db-in") || !strings.Contains(out, "gold") || !strings.Contains(out, "db1(10.4.1.1@h1)") ||
		!strings.Contains(out, "h1: no policy reported") {
		t.Fatalf("get group:\n%s", out)
	}
	if out := c.ok("-oper", "get", "-construct", "rule", "-tenant", "t1", "-policy", "db-in"); !strings.Contains(out, "web-to-db") {
		t.Fatalf("get rule:\n%s", out)
	}
	if out := c.ok("-oper", "get", "-construct", "netprofile", "-tenant", "t1"); !strings.Contains(out, "gold") {
		t.Fatalf("get netprofile:\n%s", out)
	}
	if out := c.ok("-oper", "get", "-construct", "group", "-tenant", "t1", "-json", "db"); !strings.Contains(out, `"members"`) {
		t.Fatalf("get group -json:\n%s", out)
	}

	before := etcdtest.Dump(t, s)
	rule := func(extra ...string) []string {
		return append([]string{"-oper", "create", "-construct", "rule", "-tenant", "t1", "-policy", "db-in", "-direction", "in", "-action", "allow"}, extra...)
	}
	bad := [][]string{
		rule("-priority", "20", "-from-group", "nope", "r"),
		rule("-priority", "20", "-from-network", "nope", "r"),
		rule("-priority", "20", "-protocol", "tcp", "-port", "0", "r"),
		rule("-priority", "20", "-protocol", "tcp", "-port", "70000", "r"),
		rule("-priority", "20", "-protocol", "tcp", "-port", "90-80", "r"),
		rule("-priority", "20", "-port", "80", "r"),
		rule("-priority", "20", "-protocol", "gre", "r"),
		rule("-priority", "20", "-from-ip", "10.0.0.1/8", "r"),
		rule("-priority", "20", "-to-group", "web", "r"),
		rule("-priority", "0", "r"),
		rule("-priority", "10", "-protocol", "tcp", "-action", "deny", "r"),
		rule("-priority", "20", "web-to-db"),
		{"-oper", "create", "-construct", "rule", "-tenant", "t1", "-priority", "20", "-direction", "in", "-action", "allow", "r"},
		{"-oper", "create", "-construct", "rule", "-tenant", "t1", "-policy", "db-in", "-priority", "20", "-direction", "up", "-action", "allow", "r"},
		{"-oper", "create", "-construct", "netprofile", "-tenant", "t1", "-bandwidth", "10mbps", "p"},
		{"-oper", "create", "-construct", "netprofile", "-tenant", "t1", "-dscp", "64", "p"},
		{"-oper", "create", "-construct", "netprofile", "-tenant", "t1", "-bandwidth", "1mbit", "-burst", "1gb", "p"},
		{"-oper", "create", "-construct", "netprofile", "-tenant", "t1", "p"},
		{"-oper", "create", "-construct", "group", "-tenant", "t1", "-net-id", "nope", "g"},
		{"-oper", "create", "-construct", "group", "-tenant", "t1", "-net-id", "n1", "-policy", "nope", "g"},
		{"-oper", "create", "-construct", "group", "-tenant", "t1", "-net-id", "n1", "-netprofile", "nope", "g"},
		{"-oper", "create", "-construct", "group", "-tenant", "t1", "-net-id", "mv", "-policy", "db-in", "g"},
		{"-oper", "create", "-construct", "group", "-tenant", "t1", "-net-id", "mv", "-netprofile", "gold", "g"},
		{"-oper", "create", "-construct", "endpoint", "-tenant", "t1", "-net-id", "n1", "-group", "nope", "e2"},
		{"-oper", "create", "-construct", "endpoint", "-tenant", "t1", "-net-id", "mv", "-group", "web", "e2"},
		{"-oper", "delete", "-construct", "policy", "-tenant", "t1", "db-in"},
		{"-oper", "delete", "-construct", "netprofile", "-tenant", "t1", "gold"},
		{"-oper", "delete", "-construct", "group", "-tenant", "t1", "db"},
		{"-oper", "delete", "-construct", "group", "-tenant", "t1", "web"},
		{"-oper", "delete", "-construct", "rule", "-tenant", "t1", "-policy", "db-in", "nope"},
		{"-oper", "get", "-construct", "group", "-tenant", "t1", "nope"},
	}
	for _, args := range bad {
		out, errOut, err := c.run(args...)
		if err == nil {
			t.Fatalf("netdcli %s succeeded:\n%s", strings.Join(args, " "), out)
		}
		if lines := strings.Count(strings.TrimSpace(errOut), "\n"); lines != 0 || !strings.HasPrefix(errOut, "netdcli: ") {
			t.Fatalf("netdcli %s: want one 'netdcli: ...' line on stderr, got %q", strings.Join(args, " "), errOut)
		}
		if after := etcdtest.Dump(t, s); after != before {
			t.Fatalf("netdcli %s changed the store", strings.Join(args, " "))
		}
	}
	_, errOut, _ := c.run("-oper", "delete", "-construct", "policy", "-tenant", "t1", "db-in")
	if !strings.Contains(errOut, "used by group db") {
		t.Fatalf("delete of a policy in use: %q", errOut)
	}
	c.ok("-oper", "delete", "-construct", "endpoint", "-tenant", "t1", "db1")
	c.ok("-oper", "delete", "-construct", "group", "-tenant", "t1", "db")
	c.ok("-oper", "delete", "-construct", "rule", "-tenant", "t1", "-policy", "db-in", "web-to-db")
	c.ok("-oper", "delete", "-construct", "group", "-tenant", "t1", "web")
	c.ok("-oper", "delete", "-construct", "policy", "-tenant", "t1", "db-in")
	c.ok("-oper", "delete", "-construct", "netprofile", "-tenant", "t1", "gold")
}
