package ipvlan

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
)

// These tests need neither root nor ipvlan: option validation, the records,
// and the errors EnsureNetwork returns before anything reaches the kernel.

func testLog() *logrus.Entry {
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	return logrus.NewEntry(l)
}

func spec(name, subnet string, opts map[string]string) core.NetworkSpec {
	return core.NetworkSpec{Network: core.Network{Tenant: "t", Name: name, Driver: Name, Encap: core.EncapVLAN, Tag: 1,
		Subnet: subnet, Options: opts}}
}

func TestParseOptions(t *testing.T) {
	for _, c := range []struct {
		name string
		opts map[string]string
		want options
		err  error
	}{
		{"default mode", map[string]string{"parent": "eth1"}, options{Parent: "eth1", Mode: ModeL2}, nil},
		{"l3", map[string]string{"parent": "eth1", "mode": "l3"}, options{Parent: "eth1", Mode: ModeL3}, nil},
		{"no parent", map[string]string{"mode": "l2"}, options{}, core.ErrInvalid},
		{"bad mode", map[string]string{"parent": "eth1", "mode": "l3s"}, options{}, core.ErrInvalid},
		{"misspelt option", map[string]string{"parent": "eth1", "mdoe": "l3"}, options{}, core.ErrInvalid},
		{"parent not a name", map[string]string{"parent": "eth1/../x"}, options{}, core.ErrInvalid},
		{"parent too long", map[string]string{"parent": "abcdefghijklmnop"}, options{}, core.ErrInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseOptions(spec("n", "10.1.0.0/24", c.opts).Network)
			if !errors.Is(err, c.err) || (c.err == nil && got != c.want) {
				t.Fatalf("parseOptions(%v) = %+v, %v; want %+v, %v", c.opts, got, err, c.want, c.err)
			}
		})
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	quiet := logrus.New()
	quiet.SetOutput(io.Discard) // the warnings about the broken record below are expected
	r := records{dir: dir, log: logrus.NewEntry(quiet)}
	ep := epRecord{Key: "t/a", Net: "t/n", Fingerprint: "0123456789", NetNSPath: "/var/run/netns/x", NetNSID: "4:4026532",
		Parent: "eth1", Mode: ModeL3, IP: "10.1.0.2", Prefix: 24, IfName: "eth0", IfIndex: 7}
	if err := r.putEP(ep); err != nil {
		t.Fatal(err)
	}
	if err := r.putNet(netRecord{Key: "t/n", Fingerprint: "f", Parent: "eth1", Mode: ModeL3}); err != nil {
		t.Fatal(err)
	}
	got, ok, err := r.getEP("t/a")
	if err != nil || !ok || got != ep {
		t.Fatalf("getEP = %+v %v %v, want %+v", got, ok, err, ep)
	}
	if _, ok, err := r.getEP("t/none"); ok || err != nil {
		t.Fatalf("absent record: %v %v", ok, err)
	}
	// A crash mid-write leaves a temp file; an edited record may not decode.
	// Neither may stop a listing.
	for name, body := range map[string]string{".t%2Fa.json.tmp123": "{", "t%2Fbroken.json": "{"} {
		if err := os.WriteFile(filepath.Join(dir, "endpoints", name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	eps, err := r.listEPs()
	if err != nil || len(eps) != 1 || eps[0] != ep {
		t.Fatalf("listEPs = %+v %v", eps, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "endpoints", ".t%2Fa.json.tmp123")); !os.IsNotExist(err) {
		t.Fatalf("leftover temp file not cleaned: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, "endpoints", "t%2Fa.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record file: %v %v", fi, err)
	}
	for i := 0; i < 2; i++ { // removing twice is fine
		if err := r.delEP("t/a"); err != nil {
			t.Fatal(err)
		}
	}
	if eps, _ := r.listEPs(); len(eps) != 0 {
		t.Fatalf("after delete: %+v", eps)
	}
	if nets, err := r.listNets(); err != nil || len(nets) != 1 || nets[0].Mode != ModeL3 {
		t.Fatalf("listNets = %+v %v", nets, err)
	}
}

func TestEnsureNetworkErrors(t *testing.T) {
	ctx := context.Background()
	d := New(testLog(), Config{StateDir: t.TempDir()})
	// "lo" exists in every namespace, so these run anywhere: a network only
	// records its parent and mode, nothing reaches ipvlan yet.
	l2 := spec("a", "10.1.0.0/24", map[string]string{OptParent: "lo"})
	l3 := spec("b", "10.2.0.0/24", map[string]string{OptParent: "lo", OptMode: ModeL3})
	if err := d.EnsureNetwork(ctx, l2); err != nil {
		t.Fatal(err)
	}
	if err := d.EnsureNetwork(ctx, l2); err != nil {
		t.Fatalf("second ensure: %v", err)
	}
	if err := d.EnsureNetwork(ctx, l3); !errors.Is(err, core.ErrInUse) {
		t.Fatalf("second network on lo in another mode: %v, want ErrInUse", err)
	}
	l2b := spec("c", "10.3.0.0/24", map[string]string{OptParent: "lo", OptMode: ModeL2})
	if err := d.EnsureNetwork(ctx, l2b); err != nil {
		t.Fatalf("second network on lo in the same mode: %v", err)
	}
	gone := spec("d", "10.4.0.0/24", map[string]string{OptParent: "npnosuchlink0"})
	if err := d.EnsureNetwork(ctx, gone); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("missing parent: %v, want ErrNotFound", err)
	}
	bad := spec("e", "10.5.0.0/24", map[string]string{OptParent: "lo", OptMode: "bridge"})
	if err := d.EnsureNetwork(ctx, bad); !errors.Is(err, core.ErrInvalid) {
		t.Fatalf("bad mode: %v, want ErrInvalid", err)
	}
	ep := core.EndpointSpec{Endpoint: core.Endpoint{Tenant: "t", Network: "d", Name: "x", IP: "10.4.0.2"}, Net: gone,
		NetNSPath: "/proc/self/ns/net"}
	if _, err := d.EnsureEndpoint(ctx, ep); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("endpoint on a missing parent: %v, want ErrNotFound", err)
	}

	// A new driver on the same state dir sees the same networks; after
	// removal the mode of lo is free again.
	d2 := New(testLog(), Config{StateDir: d.cfg.StateDir})
	act, err := d2.Observe(ctx)
	if err != nil || len(act.Networks) != 2 || act.Networks[l2.Key()].Fingerprint != l2.Fingerprint() {
		t.Fatalf("observe: %+v %v", act, err)
	}
	for _, n := range []core.NetworkSpec{l2, l2b, l2} {
		if err := d2.RemoveNetwork(ctx, core.ObservedNetwork{Key: n.Key()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d2.EnsureNetwork(ctx, l3); err != nil {
		t.Fatalf("l3 after the l2 networks left: %v", err)
	}
	if err := d2.RemoveEndpoint(ctx, core.ObservedEndpoint{Key: "t/absent"}); err != nil {
		t.Fatalf("remove absent endpoint: %v", err)
	}
}

// TestHostLabel: agents sharing a kernel get separate marks and state dirs.
func TestHostLabel(t *testing.T) {
	for _, c := range []struct{ host, kind, dir string }{
		{"", "ipep", DefaultStateDir},
		{"node-1", "ipep@node-1", DefaultStateDir + "/node-1"},
		{"a:b/c", "ipep@a_b_c", DefaultStateDir + "/a_b_c"},
	} {
		d := New(testLog(), Config{Host: c.host})
		if d.kind != c.kind || d.cfg.StateDir != c.dir {
			t.Errorf("host %q: kind %q, state dir %q; want %q, %q", c.host, d.kind, d.cfg.StateDir, c.kind, c.dir)
		}
	}
	d := New(testLog(), Config{Host: "x", StateDir: "/somewhere"})
	if d.cfg.StateDir != "/somewhere" {
		t.Errorf("explicit state dir replaced: %q", d.cfg.StateDir)
	}
}
