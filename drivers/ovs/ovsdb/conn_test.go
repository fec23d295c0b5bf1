package ovsdb_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
)

// blockingWait is a transaction the server parks indefinitely: a wait
// without timeout for a bridge that never appears. It is a real in-flight
// request for testing cancellation and disconnects.
func blockingWait() ovsdb.Operation {
	return ovsdb.Wait("Bridge", -1, []ovsdb.Condition{ovsdb.Eq("name", "never")}, []string{"name"}, "!=")
}

func TestEchoListDBsSchema(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	ctx := testCtx(t)
	if err := c.Echo(ctx); err != nil {
		t.Fatalf("Echo: %v", err)
	}
	dbs, err := c.ListDBs(ctx)
	if err != nil || !slices.Contains(dbs, db) {
		t.Fatalf("ListDBs = %v, %v", dbs, err)
	}
	raw, err := c.GetSchema(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Name   string                     `json:"name"`
		Tables map[string]json.RawMessage `json:"tables"`
	}
	if err := json.Unmarshal(raw, &schema); err != nil || schema.Name != db || schema.Tables["Bridge"] == nil {
		t.Fatalf("schema: %v, name %q", err, schema.Name)
	}
}

func TestContextCancelLeavesClientUsable(t *testing.T) {
	t.Parallel()
	_, c := setup(t)
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	_, err := c.Transact(ctx, db, blockingWait())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if err := c.Echo(testCtx(t)); err != nil {
		t.Fatalf("client unusable after a cancelled call: %v", err)
	}
}

func TestServerKilledFailsCalls(t *testing.T) {
	t.Parallel()
	inst, c := setup(t)
	ctx := testCtx(t)

	inflight := make(chan error, 1)
	go func() {
		_, err := c.Transact(ctx, db, blockingWait())
		inflight <- err
	}()
	// Make sure the request reached the server before killing it.
	time.Sleep(100 * time.Millisecond)
	if err := c.Echo(ctx); err != nil {
		t.Fatal(err)
	}
	inst.KillDBServer(t)

	select {
	case err := <-inflight:
		if !errors.Is(err, ovsdb.ErrDisconnected) {
			t.Errorf("in-flight call: err = %v, want ErrDisconnected", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight call hangs after the server died")
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after disconnect")
	}
	if _, err := c.Transact(ctx, db, ovsdb.Select("Bridge", nil)); !errors.Is(err, ovsdb.ErrDisconnected) {
		t.Errorf("next call: err = %v, want ErrDisconnected", err)
	}
	if err := c.Echo(ctx); !errors.Is(err, ovsdb.ErrDisconnected) {
		t.Errorf("echo: err = %v, want ErrDisconnected", err)
	}
	if _, _, err := c.Monitor(ctx, db, map[string]ovsdb.MonitorRequest{"Bridge": {}}, nil); !errors.Is(err, ovsdb.ErrDisconnected) {
		t.Errorf("monitor: err = %v, want ErrDisconnected", err)
	}
}

func TestReconnecting(t *testing.T) {
	t.Parallel()
	inst, _ := setup(t)
	ctx := testCtx(t)

	connects := 0
	r := ovsdb.NewReconnecting(inst.Addr(), quietLog(), func(ctx context.Context, c *ovsdb.Client) error {
		connects++
		return c.Echo(ctx)
	})
	defer r.Close()

	c1, err := r.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := r.Client(ctx); again != c1 {
		t.Error("a live connection was replaced")
	}
	if _, err := c1.Transact(ctx, db, bridgeOps("br-r", "p-r", nil)...); err != nil {
		t.Fatal(err)
	}

	inst.KillDBServer(t)
	<-c1.Done()
	if _, err := r.Client(ctx); err == nil {
		t.Fatal("Client succeeded with the server down")
	}
	inst.RestartDBServer(t)

	c2, err := r.Client(ctx)
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	if c2 == c1 || connects != 2 {
		t.Fatalf("expected a second connection (connects = %d)", connects)
	}
	// The committed data survived the crash: ovsdb-server logs to disk.
	if got := mustString(t, selectOne(t, c2, "Bridge", ovsdb.Eq("name", "br-r")), "name"); got != "br-r" {
		t.Errorf("bridge after restart = %q", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Client(ctx); !errors.Is(err, ovsdb.ErrClosed) {
		t.Errorf("after Close: err = %v, want ErrClosed", err)
	}
	if err := c2.Echo(ctx); !errors.Is(err, ovsdb.ErrClosed) {
		t.Errorf("closed client: err = %v, want ErrClosed", err)
	}
}

// Encoding needs no server: check the exact wire form of the tricky parts.
func TestEncoding(t *testing.T) {
	t.Parallel()
	cases := []struct {
		v    any
		want string
	}{
		{ovsdb.Set{}, `["set",[]]`},
		{ovsdb.Set(nil), `["set",[]]`},
		{ovsdb.SetOf([]ovsdb.UUID{"a"}), `["set",[["uuid","a"]]]`},
		{ovsdb.Map{"b": "2", "a": "1"}, `["map",[["a","1"],["b","2"]]]`},
		{ovsdb.NamedUUID("x"), `["named-uuid","x"]`},
		{ovsdb.Delete("Port"), `{"op":"delete","table":"Port","where":[]}`},
		{ovsdb.Update("Port", []ovsdb.Condition{ovsdb.Eq("name", "p")}, ovsdb.Row{"tag": ovsdb.Set{}}),
			`{"op":"update","row":{"tag":["set",[]]},"table":"Port","where":[["name","==","p"]]}`},
		{ovsdb.Wait("Bridge", 0, nil, nil, "=="),
			`{"columns":[],"op":"wait","rows":[],"table":"Bridge","timeout":0,"until":"==","where":[]}`},
	}
	for _, tc := range cases {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("Marshal(%#v) = %s, %v; want %s", tc.v, b, err, tc.want)
		}
	}

	var row ovsdb.Row
	in := `{"_uuid":["uuid","u1"],"tag":["set",[]],"ofport":7,"ports":["set",[["uuid","p1"],["uuid","p2"]]],` +
		`"other":["map",[["k","v"]]],"one":["uuid","p3"]}`
	if err := json.Unmarshal([]byte(in), &row); err != nil {
		t.Fatal(err)
	}
	if u, err := row.UUID(); err != nil || u != "u1" {
		t.Errorf("UUID = %q, %v", u, err)
	}
	if n, err := row.GetInt("ofport"); err != nil || n != 7 {
		t.Errorf("ofport = %d, %v", n, err)
	}
	if ps, err := row.GetUUIDs("ports"); err != nil || !slices.Equal(ps, []ovsdb.UUID{"p1", "p2"}) {
		t.Errorf("ports = %v, %v", ps, err)
	}
	if ps, err := row.GetUUIDs("one"); err != nil || !slices.Equal(ps, []ovsdb.UUID{"p3"}) {
		t.Errorf("single-element set = %v, %v", ps, err)
	}
	if m, err := row.GetStringMap("other"); err != nil || m["k"] != "v" {
		t.Errorf("map = %v, %v", m, err)
	}
	if _, err := row.GetString("ofport"); err == nil {
		t.Error("GetString on an integer column succeeded")
	}
}

// A TCP listener with a 1 s inactivity probe, configured through a Manager
// row as on a real host: the server sends "echo" to an idle client, which
// must answer or be disconnected after another probe interval.
func TestTCPAndServerEcho(t *testing.T) {
	t.Parallel()
	inst, c := setup(t)
	ctx := testCtx(t)
	mgr := inst.Vsctl(t, "--", "--id=@m", "create", "Manager", `target="ptcp:0:127.0.0.1"`, "inactivity_probe=1000",
		"--", "set", "Open_vSwitch", ".", "manager_options=@m")

	// ovsdb-server reports the port it bound in the row's status.
	var port string
	for deadline := time.Now().Add(15 * time.Second); port == "" && time.Now().Before(deadline); {
		row := selectOne(t, c, "Manager", ovsdb.Eq("_uuid", ovsdb.UUID(mgr)))
		status, _ := row.GetStringMap("status")
		if port = status["bound_port"]; port == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if port == "" {
		t.Fatal("ovsdb-server did not report the bound TCP port")
	}

	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	tc, err := ovsdb.Dial(ctx, "tcp:127.0.0.1:"+port, logrus.NewEntry(logger))
	if err != nil {
		t.Fatalf("Dial tcp: %v", err)
	}
	defer tc.Close()
	if err := tc.Echo(ctx); err != nil {
		t.Fatal(err)
	}

	answered := func() bool {
		for _, e := range hook.AllEntries() {
			if e.Message == "ovsdb: answered echo from server" {
				return true
			}
		}
		return false
	}
	// Stay idle: the probe comes after 1 s without traffic.
	for deadline := time.Now().Add(10 * time.Second); !answered() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if !answered() {
		t.Fatal("no echo request from the server was answered")
	}
	// Idle for more than another probe interval: had the reply been wrong,
	// the server would have dropped us by now.
	time.Sleep(1500 * time.Millisecond)
	if err := tc.Err(); err != nil {
		t.Fatalf("connection dropped after answering echo: %v", err)
	}
	if _, err := tc.Transact(ctx, db, ovsdb.Select("Open_vSwitch", nil, "_uuid")); err != nil {
		t.Fatalf("transact over tcp: %v", err)
	}
}
