package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/testenv"
)

// TestDockerGroups: `docker network create -o group=web` puts every endpoint
// of the Docker network in group web (its network taken from the group), and
// `docker network connect --driver-opt group=db` puts one in db; an unknown
// group is refused at network create, and at endpoint create (the start of a
// container connected to it). db lets ICMP in only from web: the web container reaches
// the db one, the container of group other does not, although db reaches it.
func TestDockerGroups(t *testing.T) {
	e := newPluginEnv(t)
	ctx := context.Background()
	s, tn := e.store, e.name
	if err := s.CreateTenant(ctx, tn); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateNetwork(ctx, core.Network{Tenant: tn, Name: "lan", Driver: "linuxbridge", Subnet: "10.83.0.0/24", Gateway: "10.83.0.1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreatePolicy(ctx, core.Policy{Tenant: tn, Name: "db-in", Rules: []core.Rule{
		{Name: "web", Priority: 10, Direction: "in", FromGroup: "web", Protocol: "icmp", Action: "allow"}}}); err == nil {
		t.Fatal("a rule naming a group that does not exist yet was taken")
	}
	for _, g := range []core.Group{{Tenant: tn, Name: "web", Network: "lan"}, {Tenant: tn, Name: "other", Network: "lan"}} {
		if _, err := s.CreateGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreatePolicy(ctx, core.Policy{Tenant: tn, Name: "db-in", Rules: []core.Rule{
		{Name: "web", Priority: 10, Direction: "in", FromGroup: "web", Protocol: "icmp", Action: "allow"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateGroup(ctx, core.Group{Tenant: tn, Name: "db", Network: "lan", Policies: []string{"db-in"}}); err != nil {
		t.Fatal(err)
	}
	net := e.name + "-web"
	args := []string{"network", "create", "-d", e.name, "--ipam-driver", e.name, "--subnet", "10.83.0.0/24", "--gateway", "10.83.0.1",
		"-o", "tenant=" + tn}
	if out, err := e.docker(append(args, "-o", "group=nope", net)...); err == nil || !strings.Contains(out+err.Error(), `unknown group "nope"`) {
		t.Fatalf("docker network create with an unknown group: %v: %s", err, out)
	}
	e.createNet(net, "10.83.0.0/24", "10.83.0.1", "group=web")
	e.run(e.name+"-w", net)
	// Created off every network, connected with a group, then started.
	for _, c := range []string{e.name + "-d", e.name + "-o", e.name + "-x"} {
		e.mustDocker("create", "--network", "none", "--name", c, "--label", testenv.ContainerLabel, e.dk.Image, "sleep", "1d")
		t.Cleanup(func() { _, _ = e.dk.CLI(t, "rm", "-f", c) })
		e.mustDocker("network", "disconnect", "none", c)
	}
	e.mustDocker("network", "connect", "--driver-opt", "group=db", net, e.name+"-d")
	e.mustDocker("network", "connect", "--driver-opt", "group=other", net, e.name+"-o")
	e.mustDocker("network", "connect", "--driver-opt", "group=nope", net, e.name+"-x")
	e.mustDocker("start", e.name+"-d", e.name+"-o")
	// Docker creates the endpoint of a connected, created container when it starts.
	if out, err := e.docker("start", e.name+"-x"); err == nil || !strings.Contains(out+err.Error(), `unknown group "nope"`) {
		t.Fatalf("start with an unknown group: %v: %s", err, out)
	}
	eps, err := s.Endpoints(ctx, tn, "lan")
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string]string{}
	for _, ep := range eps {
		groups[ep.IP] = ep.Group
	}
	ipW, ipD, ipO := e.ipOf(e.name+"-w", net), e.ipOf(e.name+"-d", net), e.ipOf(e.name+"-o", net)
	if len(eps) != 3 || groups[ipW] != "web" || groups[ipD] != "db" || groups[ipO] != "other" {
		t.Fatalf("endpoint groups by IP: %v (web %s, db %s, other %s)", groups, ipW, ipD, ipO)
	}
	if !e.ping(e.name+"-d", ipO) {
		t.Fatal("the db container does not reach the other one: its isolation below would prove nothing")
	}
	if !e.ping(e.name+"-w", ipD) {
		t.Fatal("web does not reach db, which its policy allows")
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := e.docker("exec", e.name+"-o", "ping", "-c3", "-i0.2", "-W1", ipD); err == nil {
		t.Fatal("a container of group other reaches db, whose policy lets in only web")
	}
	// Nothing is left: the refused endpoint's address, and every other once
	// the containers go.
	e.mustDocker("rm", "-f", e.name+"-w", e.name+"-d", e.name+"-o", e.name+"-x")
	e.waitNoLeaks()
}
