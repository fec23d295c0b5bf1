package ovsdb_test

import (
	"os/exec"
	"testing"
	"time"

	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
	"github.com/netplugin/netplugin/internal/ovstest"
)

// waitUpdate returns the next update that satisfies ok, failing the test
// after a timeout instead of hanging it.
func waitUpdate(t *testing.T, ch <-chan ovsdb.TableUpdates, what string, ok func(ovsdb.TableUpdates) bool) ovsdb.TableUpdates {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case u := <-ch:
			if ok(u) {
				return u
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
			return nil
		}
	}
}

func TestMonitor(t *testing.T) {
	t.Parallel()
	inst, c := setup(t)
	ctx := testCtx(t)
	inst.Vsctl(t, "add-br", "br-a", "--", "set", "Bridge", "br-a", "datapath_type=netdev")

	updates := make(chan ovsdb.TableUpdates, 16)
	initial, id, err := c.Monitor(ctx, db, map[string]ovsdb.MonitorRequest{
		"Bridge": {Columns: []string{"name", "external_ids"}},
	}, func(u ovsdb.TableUpdates) { updates <- u })
	if err != nil {
		t.Fatalf("Monitor: %v", err)
	}
	if len(initial["Bridge"]) != 1 {
		t.Fatalf("initial = %v, want one bridge", initial)
	}
	for _, ru := range initial["Bridge"] {
		if ru.Old != nil || mustString(t, ru.New, "name") != "br-a" {
			t.Errorf("initial row = %+v", ru)
		}
	}

	// A change made by another client (ovs-vsctl) is pushed to us.
	inst.Vsctl(t, "add-br", "br-b", "--", "set", "Bridge", "br-b", "datapath_type=netdev")
	waitUpdate(t, updates, "insert of br-b", func(u ovsdb.TableUpdates) bool {
		for _, ru := range u["Bridge"] {
			if ru.Old == nil && ru.New != nil && mustString(t, ru.New, "name") == "br-b" {
				return true
			}
		}
		return false
	})

	// A modify carries the new row and the old values of changed columns.
	inst.Vsctl(t, "br-set-external-id", "br-a", "owner", "netplugin")
	u := waitUpdate(t, updates, "modify of br-a", func(u ovsdb.TableUpdates) bool { return len(u["Bridge"]) == 1 })
	for _, ru := range u["Bridge"] {
		ext, err := ru.New.GetStringMap("external_ids")
		if err != nil || ext["owner"] != "netplugin" {
			t.Errorf("modified row external_ids = %v, %v", ext, err)
		}
		if old, err := ru.Old.GetStringMap("external_ids"); err != nil || len(old) != 0 {
			t.Errorf("old external_ids = %v, %v; want empty", old, err)
		}
	}

	inst.Vsctl(t, "del-br", "br-b")
	waitUpdate(t, updates, "delete of br-b", func(u ovsdb.TableUpdates) bool {
		for _, ru := range u["Bridge"] {
			if ru.New == nil && ru.Old != nil {
				return true
			}
		}
		return false
	})

	if err := c.MonitorCancel(ctx, id); err != nil {
		t.Fatalf("MonitorCancel: %v", err)
	}
	inst.Vsctl(t, "add-br", "br-c", "--", "set", "Bridge", "br-c", "datapath_type=netdev")
	// Echo is ordered after any update the server would still send.
	if err := c.Echo(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-updates:
		t.Errorf("update after MonitorCancel: %v", u)
	case <-time.After(200 * time.Millisecond):
	}
	if err := c.MonitorCancel(ctx, id); err == nil {
		t.Error("second MonitorCancel of the same id succeeded, want a server error")
	}
}

// The vswitchd half of the harness: a real ovs-vswitchd (userspace datapath,
// in its own network namespace) picks up an internal interface inserted by
// the client and assigns it an OpenFlow port number.
func TestVswitchdAssignsOfport(t *testing.T) {
	t.Parallel()
	ns := ovstest.NewNetns(t)
	inst, c := setup(t, ovstest.WithVswitchd(), ovstest.InNetns(ns))
	ctx := testCtx(t)

	updates := make(chan ovsdb.TableUpdates, 64)
	if _, _, err := c.Monitor(ctx, db, map[string]ovsdb.MonitorRequest{
		"Interface": {Columns: []string{"name", "ofport"}},
	}, func(u ovsdb.TableUpdates) { updates <- u }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Transact(ctx, db, bridgeOps("br-vs", "p-vs", nil)...); err != nil {
		t.Fatalf("insert: %v", err)
	}
	waitUpdate(t, updates, "ofport for p-vs", func(u ovsdb.TableUpdates) bool {
		for _, ru := range u["Interface"] {
			if ru.New == nil || mustString(t, ru.New, "name") != "p-vs" {
				continue
			}
			if ofport, err := ru.New.GetInt("ofport"); err == nil && ofport > 0 {
				t.Logf("p-vs got ofport %d", ofport)
				return true
			}
		}
		return false
	})
	// ovs-vsctl agrees, and the userspace datapath made a tap device for
	// the internal interface inside the instance's namespace.
	if got := inst.Vsctl(t, "get", "Interface", "p-vs", "ofport"); got != "1" {
		t.Errorf("ovs-vsctl get ofport = %q, want 1", got)
	}
	if out, err := exec.CommandContext(ctx, "ip", "-n", ns, "link", "show", "p-vs").CombinedOutput(); err != nil {
		t.Errorf("no p-vs device in namespace %s: %v: %s", ns, err, out)
	}
}
