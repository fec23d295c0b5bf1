package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// bin is the netdcli binary under test, built once by TestMain: the tests run
// it as a user would, as a separate process.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "netdcli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "netdcli")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build netdcli: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type runner struct {
	t   *testing.T
	url string
}

func newCLI(t *testing.T) (*runner, *state.Store) {
	s, e := etcdtest.Store(t)
	return &runner{t: t, url: e.Endpoint()}, s
}

func (c *runner) run(args ...string) (string, string, error) {
	cmd := exec.Command(bin, append([]string{"-etcd-url", c.url, "-host", "testhost"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (c *runner) ok(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("netdcli %s: %v: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func TestSeedGrammarWithNetns(t *testing.T) {
	c, _ := newCLI(t)
	// The seed's network has no -subnet: give the pool a subnet holding its IP.
	c.ok("-oper", "create", "-construct", "global", "-subnet-pool", "11.1.0.0/16", "-subnet-len", "16")
	c.ok("-oper", "create", "-construct", "network", "tenant1-net1")
	out := c.ok("-oper", "get", "-construct", "network", "tenant1-net1")
	if !strings.Contains(out, "11.1.0.0/16") || !strings.Contains(out, "(auto)") {
		t.Fatalf("get network:\n%s", out)
	}
	c.ok("-oper", "create", "-construct", "endpoint", "-net-id", "tenant1-net1", "-tag", "12", `-ip-address=11.1.1.1`, "tenant1-net1-ep1")
	out = c.ok("-oper", "get", "-construct", "network", "tenant1-net1")
	if !strings.Contains(out, " 12 ") {
		t.Fatalf("-tag 12 did not re-tag the network:\n%s", out)
	}
	out = c.ok("-oper", "get", "-construct", "endpoint", "tenant1-net1-ep1")
	if !strings.Contains(out, "11.1.1.1") || !strings.Contains(out, "reserved") {
		t.Fatalf("get endpoint:\n%s", out)
	}
	c.ok("-oper", "attach", "-construct", "endpoint", "-netns", "somens", "tenant1-net1-ep1")
	out = c.ok("-oper", "get", "-construct", "endpoint", "-json", "tenant1-net1-ep1")
	if !strings.Contains(out, `"netns": "somens"`) {
		t.Fatalf("json:\n%s", out)
	}
	c.ok("-oper", "detach", "-construct", "endpoint", "-netns", "somens", "tenant1-net1-ep1")
	c.ok("-oper", "delete", "-construct", "endpoint", "tenant1-net1-ep1")
	c.ok("-oper", "delete", "-construct", "network", "tenant1-net1")
}

func TestBadInputIsOneLineAndChangesNothing(t *testing.T) {
	c, s := newCLI(t)
	c.ok("-oper", "create", "-construct", "tenant", "t1")
	c.ok("-oper", "create", "-construct", "network", "-tenant", "t1", "-subnet", "10.3.1.0/24", "-gw", "10.3.1.254", "-tag", "30", "n1")
	c.ok("-oper", "create", "-construct", "endpoint", "-tenant", "t1", "-net-id", "n1", "-ip-address", "10.3.1.1", "-netns", "x", "e1")
	before := etcdtest.Dump(t, s)
	bad := [][]string{
		{"-oper", "create", "-construct", "network", "-tenant", "t1", "-subnet", "10.3.2.0/33", "n2"},
		{"-oper", "create", "-construct", "network", "-tenant", "t1", "-subnet", "10.3.2.0/24", "-gw", "10.3.3.1", "n2"},
		{"-oper", "create", "-construct", "network", "-tenant", "t1", "-subnet", "10.3.2.0/24", "-tag", "5000", "n2"},
		{"-oper", "create", "-construct", "network", "-tenant", "t1", "-subnet", "10.3.2.0/24", "-tag", "30", "n2"},
		{"-oper", "create", "-construct", "network", "-tenant", "t1", "-subnet", "10.3.9.0/24", "n1"},
		{"-oper", "create", "-construct", "tenant", "t1"},
		{"-oper", "create", "-construct", "endpoint", "-tenant", "t1", "-net-id", "n1", "e1"},
		{"-oper", "create", "-construct", "endpoint", "-tenant", "t1", "-net-id", "n1", "-ip-address", "10.9.9.9", "e2"},
		{"-oper", "create", "-construct", "endpoint", "-tenant", "t1", "-net-id", "n1", "-ip-address", "10.3.1.1", "e2"},
		{"-oper", "create", "-construct", "network", "-tenant", "nope", "-subnet", "10.3.2.0/24", "n2"},
		{"-oper", "create", "-construct", "endpoint", "-tenant", "t1", "-net-id", "nope", "e2"},
		{"-oper", "delete", "-construct", "endpoint", "-tenant", "t1", "nope"},
		{"-oper", "attach", "-construct", "endpoint", "-tenant", "t1", "-netns", "y", "e1"},
		{"-oper", "detach", "-construct", "endpoint", "-tenant", "t1", "-container-id", "other", "e1"},
		{"-oper", "delete", "-construct", "network", "-tenant", "t1", "n1"},
		{"-oper", "attach", "-construct", "endpoint", "-tenant", "t1", "-container-id", "no-such-container", "-docker-socket", "/nonexistent.sock", "e1"},
		{"-oper", "frobnicate", "-construct", "endpoint", "e1"},
		{"-cfg", "/nonexistent.json"},
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
}

func TestEtcdUnreachableFailsFast(t *testing.T) {
	c := &runner{t: t, url: fmt.Sprintf("127.0.0.1:%d", etcdtest.FreePort(t))}
	start := time.Now()
	_, errOut, err := c.run("-oper", "get", "-construct", "network")
	if err == nil || !strings.Contains(errOut, "etcd") {
		t.Fatalf("want an etcd error, got %v %q", err, errOut)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestEightProcessesAllocateDistinctIPs(t *testing.T) {
	c, s := newCLI(t)
	c.ok("-oper", "create", "-construct", "network", "-subnet", "10.4.0.0/22", "big")
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, errOut, err := c.run("-oper", "create", "-construct", "endpoint", "-net-id", "big", fmt.Sprintf("w%d-%d", w, i)); err != nil {
					errs <- fmt.Errorf("%v: %s", err, errOut)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eps, err := s.Endpoints(context.Background(), "default", "big")
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]bool{}
	for _, e := range eps {
		ips[e.IP] = true
	}
	if len(eps) != 400 || len(ips) != 400 {
		t.Fatalf("%d endpoints with %d distinct IPs, want 400 and 400", len(eps), len(ips))
	}
}

func TestCfgApply(t *testing.T) {
	c, s := newCLI(t)
	doc := filepath.Join(t.TempDir(), "doc.json")
	if err := os.WriteFile(doc, []byte(`{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.5.0.0/24",
	  "endpoints":[{"name":"a","netns":"nsa"},{"name":"b"}]}]}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := c.ok("-cfg", doc); !strings.Contains(out, "4 created") {
		t.Fatalf("apply: %s", out)
	}
	before := etcdtest.Dump(t, s)
	cmd := exec.Command(bin, "-etcd-url", c.url, "-cfg", "-")
	cmd.Stdin = strings.NewReader(`{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.6.0.0/24"}]}]}`)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("changing a subnet was accepted: %s", out)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("rejected document changed the store")
	}
	out := c.ok("-oper", "get", "-construct", "endpoint", "-tenant", "blue")
	if !strings.Contains(out, "netns:nsa") || !strings.Contains(out, "10.5.0.2") {
		t.Fatalf("get:\n%s", out)
	}
}

// TestTenantInferredFromUniqueName runs the by-hand sequence: the network
// is made with -tenant, the endpoint commands name no tenant.
func TestTenantInferredFromUniqueName(t *testing.T) {
	c, _ := newCLI(t)
	c.ok("-oper", "create", "-construct", "tenant", "tenant1")
	c.ok("-oper", "create", "-construct", "network", "-tenant", "tenant1", "-subnet", "10.11.1.0/24", "-gw", "10.11.1.254", "tenant1-net1")
	c.ok("-oper", "create", "-construct", "endpoint", "-net-id", "tenant1-net1", "-tag", "12", "-ip-address=10.11.1.1", "tenant1-net1-ep1")
	out := c.ok("-oper", "get", "-construct", "endpoint", "tenant1-net1-ep1")
	if !strings.Contains(out, "tenant1 ") || !strings.Contains(out, "10.11.1.1") {
		t.Fatalf("get:\n%s", out)
	}
	// The same name in two tenants is ambiguous without -tenant.
	c.ok("-oper", "create", "-construct", "tenant", "tenant2")
	c.ok("-oper", "create", "-construct", "network", "-tenant", "tenant2", "-subnet", "10.11.1.0/24", "tenant1-net1")
	c.ok("-oper", "create", "-construct", "endpoint", "-tenant", "tenant2", "-net-id", "tenant1-net1", "tenant1-net1-ep1")
	if _, errOut, err := c.run("-oper", "delete", "-construct", "endpoint", "tenant1-net1-ep1"); err == nil || !strings.Contains(errOut, "give -tenant") {
		t.Fatalf("ambiguous name accepted: %v %s", err, errOut)
	}
	c.ok("-oper", "delete", "-construct", "endpoint", "-tenant", "tenant1", "tenant1-net1-ep1")
}

// TestCfgDryRunAndPrune: -cfg FILE --dry-run prints the plan, one change a
// line (or JSON with -json), and changes nothing; -prune takes only docker.
func TestCfgDryRunAndPrune(t *testing.T) {
	c, s := newCLI(t)
	dir := t.TempDir()
	write := func(name, js string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(js), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	first := write("first.json", `{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.5.0.0/24",
	  "endpoints":[{"name":"a","netns":"nsa"},{"name":"gone"}]}]}]}`)
	c.ok("-cfg", first)
	second := write("second.json", `{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.5.0.0/24",
	  "endpoints":[{"name":"a","netns":"nsb"},{"name":"b"}]}]}]}`)
	before := etcdtest.Dump(t, s)
	out := c.ok("-cfg", second, "--dry-run")
	want := "delete endpoint blue/gone: network web, 10.5.0.2, host testhost\n" +
		"update endpoint blue/a: attach netns nsa -> netns nsb\n" +
		"create endpoint blue/b: network web, 10.5.0.2, host testhost, not attached\n" +
		"plan: 1 to create, 1 to update, 1 to delete, 0 kept (dry run: nothing changed)\n"
	if out != want {
		t.Fatalf("dry run:\n%s\nwant:\n%s", out, want)
	}
	var p state.Plan
	if err := json.Unmarshal([]byte(c.ok("-cfg", second, "-dry-run", "-json")), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Changes) != 3 || p.Changes[2].Action != "create" || p.Changes[2].Name != "blue/b" || p.Created != 1 {
		t.Fatalf("json plan %+v", p)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("dry run changed the store")
	}
	for _, bad := range [][]string{{"-cfg", second, "-prune", "everything"}, {"-oper", "get", "-construct", "network", "-dry-run"}} {
		if _, errOut, err := c.run(bad...); err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Fatalf("netdcli %v: %v %q", bad, err, errOut)
		}
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("refused commands changed the store")
	}
	if out := c.ok("-cfg", second, "-prune", "docker"); out != "applied: 1 created, 1 updated, 1 deleted\n" {
		t.Fatalf("apply: %q", out)
	}
	if out := c.ok("-cfg", second, "--dry-run"); out != "plan: 0 to create, 0 to update, 0 to delete, 0 kept (dry run: nothing changed)\n" {
		t.Fatalf("dry run after apply: %q", out)
	}
}

// TestAttachMovesHostOnRoutedNetwork: attach -host on an ipvlan l3 network
// takes an address of the new host's block; -ip-address outside it is refused.
func TestAttachMovesHostOnRoutedNetwork(t *testing.T) {
	c, s := newCLI(t)
	c.ok("-oper", "create", "-construct", "network", "-driver", "ipvlan", "-mode", "l3", "-parent", "eth9", "-subnet", "10.9.0.0/24", "r")
	c.ok("-oper", "create", "-construct", "endpoint", "-net-id", "r", "-host", "h1", "e")
	before := etcdtest.Dump(t, s)
	_, errOut, err := c.run("-oper", "attach", "-construct", "endpoint", "-host", "h2", "-netns", "x", "-ip-address", "10.9.0.1", "e")
	if err == nil || !strings.Contains(errOut, "outside 10.9.0.16/28, the block of host h2") {
		t.Fatalf("attach with an IP outside the new block: %v %s", err, errOut)
	}
	if etcdtest.Dump(t, s) != before {
		t.Fatal("refused attach changed the store")
	}
	c.ok("-oper", "attach", "-construct", "endpoint", "-host", "h2", "-netns", "x", "e")
	ep, _, err := s.GetEndpoint(context.Background(), "default", "e")
	if err != nil || ep.Host != "h2" || ep.IP != "10.9.0.17" {
		t.Fatalf("moved endpoint %+v, %v", ep, err)
	}
}
