package ovs

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/ovstest"
)

// snapshot is everything an operator could see change in OVSDB.
func snapshot(t *testing.T, inst *ovstest.Instance) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"Bridge", "Port", "Interface"} {
		b.WriteString(inst.Vsctl(t, "--columns=name,external_ids", "list", table))
	}
	return inst.Vsctl(t, "show") + b.String()
}

// Each bad input fails with a clear error and changes nothing.
func TestBadInput(t *testing.T) {
	nstest.RequireRoot(t)
	p := nstest.Prefix()
	good := network(p, "n", core.EncapVLAN, 10, "10.81.0.0/24")

	t.Run("ovsdb socket missing", func(t *testing.T) {
		d, err := New(testCtx(t), Config{OVSDB: "unix:/nonexistent/" + p + "/db.sock", DatapathType: "netdev"}, testLog(t))
		if err != nil {
			t.Fatal(err) // New must not need OVS up
		}
		defer d.Close()
		start := time.Now()
		errs := []error{d.EnsureNetwork(testCtx(t), good),
			d.RemoveNetwork(testCtx(t), core.ObservedNetwork{Key: good.Key()}),
			d.RemoveEndpoint(testCtx(t), core.ObservedEndpoint{Key: p + "/e"})}
		_, err = d.Observe(testCtx(t))
		errs = append(errs, err)
		for i, err := range errs {
			if err == nil || !strings.Contains(err.Error(), "OVSDB") {
				t.Errorf("call %d: %v, want an OVSDB connection error", i, err)
			}
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("failing calls took %v", time.Since(start))
		}
	})

	t.Run("vswitchd down", func(t *testing.T) {
		inst := ovstest.Start(t) // ovsdb-server only
		d, err := New(testCtx(t), Config{OVSDB: inst.Addr(), RunDir: inst.Dir, DatapathType: "netdev"}, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		before := snapshot(t, inst)
		if err := d.EnsureNetwork(testCtx(t), good); err == nil || !strings.Contains(err.Error(), "ovs-vswitchd is not running") {
			t.Errorf("EnsureNetwork: %v", err)
		}
		if _, err := d.Observe(testCtx(t)); err == nil {
			t.Error("Observe succeeded without vswitchd")
		}
		if after := snapshot(t, inst); after != before {
			t.Errorf("database changed:\n%s\n---\n%s", before, after)
		}
	})

	h := newHost(t, nil)
	check := func(t *testing.T, d *Driver, want error, f func(*Driver) error) {
		t.Helper()
		before := snapshot(t, h.inst)
		err := f(d)
		if !errors.Is(err, want) {
			t.Errorf("got %v, want %v", err, want)
		} else {
			t.Logf("error as the user sees it: %v", err)
		}
		if after := snapshot(t, h.inst); after != before {
			t.Errorf("database changed:\n%s\n---\n%s", before, after)
		}
	}
	t.Run("ovsdb hangs", func(t *testing.T) {
		// A server that accepts and never answers: every call must give up
		// after Config.Timeout instead of hanging the agent.
		sock := filepath.Join(t.TempDir(), "hang.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		cfg := h.cfg
		cfg.OVSDB, cfg.Timeout = "unix:"+sock, 300*time.Millisecond
		d := (&host{cfg: cfg}).newDriver(t)
		start := time.Now()
		if err := d.EnsureNetwork(testCtx(t), good); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("EnsureNetwork: %v, want a deadline error", err)
		}
		if _, err := d.Observe(testCtx(t)); err == nil {
			t.Error("Observe succeeded against a silent server")
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("two calls took %v with a 300ms timeout", el)
		}
	})
	t.Run("bad tags", func(t *testing.T) {
		for _, n := range []core.NetworkSpec{
			network(p, "v0", core.EncapVLAN, 0, "10.81.1.0/24"),
			network(p, "v4095", core.EncapVLAN, 4095, "10.81.1.0/24"),
			network(p, "x0", core.EncapVXLAN, 0, "10.81.1.0/24"),
			network(p, "xbig", core.EncapVXLAN, 1<<24, "10.81.1.0/24"),
			network(p, "gre", "gre", 5, "10.81.1.0/24"),
		} {
			check(t, h.drv, core.ErrInvalid, func(d *Driver) error { return d.EnsureNetwork(testCtx(t), n) })
		}
		ep := endpoint(t, p, "e", "10.81.1.1", network(p, "v5000", core.EncapVLAN, 5000, "10.81.1.0/24"), 1)
		check(t, h.drv, core.ErrInvalid, func(d *Driver) error { _, err := d.EnsureEndpoint(testCtx(t), ep); return err })
	})
	t.Run("endpoint before its network", func(t *testing.T) {
		ep := endpoint(t, p, "f", "10.81.0.1", good, 2)
		check(t, h.drv, core.ErrNotFound, func(d *Driver) error { _, err := d.EnsureEndpoint(testCtx(t), ep); return err })
		if l := hostLinks(t, h.ns); len(l) != 0 {
			t.Errorf("links left: %v", l)
		}
	})
	t.Run("bridge deleted under us", func(t *testing.T) {
		mustEnsureNets(t, h.drv, good)
		h.vsctl(t, "del-br", "np-int")
		ep := endpoint(t, p, "g", "10.81.0.2", good, 3)
		// The driver still believes in the network (cached): the port insert
		// must fail as a whole and leave no veth behind.
		check(t, h.drv, core.ErrNotFound, func(d *Driver) error { _, err := d.EnsureEndpoint(testCtx(t), ep); return err })
		if l := hostLinks(t, h.ns); len(l) != 0 {
			t.Errorf("links left: %v", l)
		}
		removeAll(t, h.drv, nil, []core.NetworkSpec{good})
	})
	t.Run("uplink missing", func(t *testing.T) {
		cfg := h.cfg
		cfg.Uplink = "nosuch0"
		d := (&host{cfg: cfg}).newDriver(t)
		check(t, d, core.ErrNotFound, func(d *Driver) error { return d.EnsureNetwork(testCtx(t), good) })
	})
	t.Run("uplink owned by someone else", func(t *testing.T) {
		h.sh(t, "ip", "link", "add", "upx0", "type", "veth", "peer", "name", "upx1")
		h.vsctl(t, "add-br", "br-other", "--", "set", "Bridge", "br-other", "datapath_type=netdev", "--", "add-port", "br-other", "upx0")
		defer h.vsctl(t, "del-br", "br-other")
		cfg := h.cfg
		cfg.Uplink = "upx0"
		d := (&host{cfg: cfg}).newDriver(t)
		check(t, d, core.ErrInUse, func(d *Driver) error { return d.EnsureNetwork(testCtx(t), good) })
	})
	t.Run("bridge not ours", func(t *testing.T) {
		h.vsctl(t, "add-br", "np-int", "--", "set", "Bridge", "np-int", "datapath_type=netdev")
		defer h.vsctl(t, "del-br", "np-int")
		check(t, h.drv, core.ErrInUse, func(d *Driver) error { return d.EnsureNetwork(testCtx(t), good) })
		// Nothing of ours is on it, so removing a network is a no-op.
		check(t, h.drv, nil, func(d *Driver) error {
			return d.RemoveNetwork(testCtx(t), core.ObservedNetwork{Key: good.Key()})
		})
	})
	t.Run("conflicting VLAN", func(t *testing.T) {
		mustEnsureNets(t, h.drv, good)
		defer removeAll(t, h.drv, nil, []core.NetworkSpec{good})
		other := network(p, "same-tag", core.EncapVLAN, 10, "10.81.2.0/24")
		check(t, h.drv, core.ErrInUse, func(d *Driver) error { return d.EnsureNetwork(testCtx(t), other) })
	})
}
