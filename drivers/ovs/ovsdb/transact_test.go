package ovsdb_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
)

func TestInsertSelectUpdateDelete(t *testing.T) {
	t.Parallel()
	inst, c := setup(t)
	ctx := testCtx(t)

	res, err := c.Transact(ctx, db, bridgeOps("br-crud", "p-crud", map[string]string{"netplugin-ep": "ep-1"})...)
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	if len(res) != 4 || res[1].UUID == "" || res[2].UUID == "" || res[3].Count != 1 {
		t.Fatalf("unexpected insert results: %+v", res)
	}
	portUUID, brUUID := res[1].UUID, res[2].UUID

	// The change is real: ovs-vsctl sees it.
	if got := inst.Vsctl(t, "list-br"); got != "br-crud" {
		t.Fatalf("ovs-vsctl list-br = %q", got)
	}

	br := selectOne(t, c, "Bridge", ovsdb.Eq("name", "br-crud"))
	if u, _ := br.UUID(); u != brUUID {
		t.Errorf("bridge _uuid = %s, want %s", u, brUUID)
	}
	if dt := mustString(t, br, "datapath_type"); dt != "netdev" {
		t.Errorf("datapath_type = %q", dt)
	}
	ports, err := br.GetUUIDs("ports")
	if err != nil || len(ports) != 1 || ports[0] != portUUID {
		t.Errorf("ports = %v, %v; want [%s]", ports, err, portUUID)
	}

	root := selectOne(t, c, "Open_vSwitch")
	if brs, _ := root.GetUUIDs("bridges"); !slices.Contains(brs, brUUID) {
		t.Errorf("Open_vSwitch.bridges = %v, want it to contain %s", brs, brUUID)
	}

	// Find the port by one external_ids key, the way the driver will.
	port := selectOne(t, c, "Port", ovsdb.Includes("external_ids", ovsdb.Map{"netplugin-ep": "ep-1"}))
	if name := mustString(t, port, "name"); name != "p-crud" {
		t.Errorf("port name = %q", name)
	}
	ext, err := port.GetStringMap("external_ids")
	if err != nil || ext["netplugin-ep"] != "ep-1" {
		t.Errorf("external_ids = %v, %v", ext, err)
	}
	if _, err := port.GetInt("tag"); !errors.Is(err, ovsdb.ErrNoValue) {
		t.Errorf("tag of untagged port: err = %v, want ErrNoValue", err)
	}
	if _, err := port.GetString("no_such_column"); !errors.Is(err, ovsdb.ErrNoColumn) {
		t.Errorf("missing column: err = %v, want ErrNoColumn", err)
	}

	// Update the VLAN tag, then clear it with the empty set.
	res, err = c.Transact(ctx, db, ovsdb.Update("Port", []ovsdb.Condition{ovsdb.Eq("_uuid", portUUID)}, ovsdb.Row{"tag": 100}))
	if err != nil || res[0].Count != 1 {
		t.Fatalf("update tag: %v (%+v)", err, res)
	}
	port = selectOne(t, c, "Port", ovsdb.Eq("name", "p-crud"))
	if tag, err := port.GetInt("tag"); err != nil || tag != 100 {
		t.Errorf("tag = %d, %v; want 100", tag, err)
	}
	if got := inst.Vsctl(t, "get", "Port", "p-crud", "tag"); got != "100" {
		t.Errorf("ovs-vsctl get tag = %q", got)
	}
	if _, err := c.Transact(ctx, db, ovsdb.Update("Port", []ovsdb.Condition{ovsdb.Eq("name", "p-crud")}, ovsdb.Row{"tag": ovsdb.Set{}})); err != nil {
		t.Fatalf("clear tag: %v", err)
	}
	port = selectOne(t, c, "Port", ovsdb.Eq("name", "p-crud"))
	if _, err := port.GetInt("tag"); !errors.Is(err, ovsdb.ErrNoValue) {
		t.Errorf("cleared tag: err = %v, want ErrNoValue", err)
	}

	// Delete: detach from the root and delete the bridge; the port and
	// interface are not root tables, so the server garbage-collects them.
	res, err = c.Transact(ctx, db,
		ovsdb.Mutate("Open_vSwitch", nil, ovsdb.Mut("bridges", "delete", ovsdb.Set{brUUID})),
		ovsdb.Delete("Bridge", ovsdb.Eq("_uuid", brUUID)),
		ovsdb.Comment("ovsdb test: delete bridge"))
	if err != nil || res[1].Count != 1 {
		t.Fatalf("delete: %v (%+v)", err, res)
	}
	res, err = c.Transact(ctx, db, ovsdb.Select("Bridge", nil), ovsdb.Select("Port", nil), ovsdb.Select("Interface", nil))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if len(r.Rows) != 0 {
			t.Errorf("select %d after delete: %d rows left", i, len(r.Rows))
		}
	}
	if got := inst.Vsctl(t, "list-br"); got != "" {
		t.Errorf("ovs-vsctl list-br after delete = %q", got)
	}
}

func TestTransactionErrors(t *testing.T) {
	t.Parallel()
	inst, c := setup(t)
	ctx := testCtx(t)
	inst.Vsctl(t, "add-br", "br-keep", "--", "set", "Bridge", "br-keep", "datapath_type=netdev")

	// A wait whose condition does not hold fails at once with timeout 0,
	// and the insert before it must not be committed.
	ops := append(bridgeOps("br-new", "p-new", nil),
		ovsdb.Wait("Bridge", 0, []ovsdb.Condition{ovsdb.Eq("name", "br-keep")}, []string{"datapath_type"}, "==",
			ovsdb.Row{"datapath_type": "system"}))
	_, err := c.Transact(ctx, db, ops...)
	var te *ovsdb.TxnError
	if !errors.As(err, &te) {
		t.Fatalf("failed wait: err = %v, want *TxnError", err)
	}
	if te.Index != 4 || te.Op != "wait" || te.Err != "timed out" {
		t.Errorf("TxnError = %+v, want index 4, op wait, timed out", te)
	}

	// A second bridge named br-keep breaks the schema's unique index on
	// Bridge.name, which the server finds at commit time: the error comes
	// after the ops.
	ops = []ovsdb.Operation{
		ovsdb.Insert("Bridge", "br", ovsdb.Row{"name": "br-keep"}),
		ovsdb.Mutate("Open_vSwitch", nil, ovsdb.Mut("bridges", "insert", ovsdb.Set{ovsdb.NamedUUID("br")})),
	}
	_, err = c.Transact(ctx, db, ops...)
	if !errors.As(err, &te) || te.Err != "constraint violation" || te.Index != len(ops) || te.Op != "commit" {
		t.Fatalf("constraint violation: err = %v (%+v)", err, te)
	}
	if !strings.Contains(err.Error(), "br-keep") {
		t.Errorf("error text %q lacks the server's details", err)
	}

	// A reference to a row that does not exist.
	_, err = c.Transact(ctx, db, ovsdb.Update("Bridge", []ovsdb.Condition{ovsdb.Eq("name", "br-keep")},
		ovsdb.Row{"ports": ovsdb.Set{ovsdb.UUID("7c0c6f4e-0d8b-4a5e-9a43-2b1f2f9e0c11")}}))
	if !errors.As(err, &te) || te.Err != "referential integrity violation" {
		t.Fatalf("dangling reference: err = %v", err)
	}

	// Nothing changed.
	if got := inst.Vsctl(t, "list-br"); got != "br-keep" {
		t.Errorf("bridges after failed transactions = %q, want only br-keep", got)
	}
	if got := inst.Vsctl(t, "--columns=name", "--bare", "list", "Port"); got != "br-keep" {
		t.Errorf("ports after failed transactions = %q", got)
	}

	// An RPC-level error (unknown database) is not a TxnError.
	_, err = c.Transact(ctx, "No_Such_DB", ovsdb.Select("Bridge", nil))
	var re *ovsdb.RPCError
	if !errors.As(err, &re) || errors.As(err, &te) {
		t.Errorf("unknown db: err = %v, want *RPCError", err)
	}
}

func TestBatchInsert200Ports(t *testing.T) {
	t.Parallel()
	inst, c := setup(t)
	ctx := testCtx(t)

	const n = 200
	ops := make([]ovsdb.Operation, 0, 2*n+2)
	ports := make(ovsdb.Set, 0, n)
	for i := range n {
		iface, port := fmt.Sprintf("i%d", i), fmt.Sprintf("p%d", i)
		name := fmt.Sprintf("batch%03d", i)
		ops = append(ops,
			ovsdb.Insert("Interface", iface, ovsdb.Row{"name": name, "type": "internal"}),
			ovsdb.Insert("Port", port, ovsdb.Row{
				"name":         name,
				"interfaces":   ovsdb.Set{ovsdb.NamedUUID(iface)},
				"tag":          i%4094 + 1,
				"external_ids": ovsdb.StringMap(map[string]string{"batch": "yes"}),
			}))
		ports = append(ports, ovsdb.NamedUUID(port))
	}
	ops = append(ops,
		ovsdb.Insert("Bridge", "br", ovsdb.Row{"name": "br-batch", "datapath_type": "netdev", "ports": ports}),
		ovsdb.Mutate("Open_vSwitch", nil, ovsdb.Mut("bridges", "insert", ovsdb.Set{ovsdb.NamedUUID("br")})))

	start := time.Now()
	res, err := c.Transact(ctx, db, ops...)
	if err != nil {
		t.Fatalf("batch insert: %v", err)
	}
	t.Logf("%d operations in %v", len(ops), time.Since(start))
	if len(res) != len(ops) {
		t.Fatalf("got %d results for %d ops", len(res), len(ops))
	}

	br := selectOne(t, c, "Bridge", ovsdb.Eq("name", "br-batch"))
	if got, _ := br.GetUUIDs("ports"); len(got) != n {
		t.Errorf("bridge has %d ports, want %d", len(got), n)
	}
	res, err = c.Transact(ctx, db, ovsdb.Select("Port",
		[]ovsdb.Condition{ovsdb.Includes("external_ids", ovsdb.Map{"batch": "yes"})}, "name", "tag"))
	if err != nil || len(res[0].Rows) != n {
		t.Fatalf("select batch ports: %v, %d rows", err, len(res[0].Rows))
	}
	if got := strings.Count(inst.Vsctl(t, "list-ports", "br-batch"), "\n") + 1; got != n {
		t.Errorf("ovs-vsctl list-ports: %d ports, want %d", got, n)
	}
}

// Many goroutines share one client; each must get its own answer back.
func TestConcurrentCalls(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	ctx := testCtx(t)

	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			name := fmt.Sprintf("br-c%02d", i)
			ops := []ovsdb.Operation{
				ovsdb.Insert("Bridge", "br", ovsdb.Row{"name": name, "datapath_type": "netdev"}),
				ovsdb.Mutate("Open_vSwitch", nil, ovsdb.Mut("bridges", "insert", ovsdb.Set{ovsdb.NamedUUID("br")})),
				ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("_uuid", ovsdb.NamedUUID("br"))}, "name"),
			}
			res, err := c.Transact(ctx, db, ops...)
			if err != nil {
				errs <- err
				return
			}
			if got, _ := res[2].Rows[0].GetString("name"); got != name {
				errs <- fmt.Errorf("call %d got the answer for %q", i, got)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	root := selectOne(t, c, "Open_vSwitch")
	if brs, _ := root.GetUUIDs("bridges"); len(brs) != n {
		t.Errorf("%d bridges, want %d", len(brs), n)
	}
}
