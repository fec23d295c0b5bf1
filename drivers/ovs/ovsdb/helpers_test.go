package ovsdb_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
	"github.com/netplugin/netplugin/internal/ovstest"
)

const db = "Open_vSwitch"

// quietLog discards client logs: goroutines of a closed client may still log
// after the test returned, when t.Log would panic.
func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// setup starts a private ovsdb-server and connects a client to it. The
// client is closed before the server stops (cleanups run in reverse).
func setup(t *testing.T, opts ...ovstest.Option) (*ovstest.Instance, *ovsdb.Client) {
	t.Helper()
	inst := ovstest.Start(t, opts...)
	c, err := ovsdb.Dial(testCtx(t), inst.Addr(), quietLog())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return inst, c
}

// bridgeOps inserts a netdev bridge with one port and interface, linked by
// named uuids, and attaches it to the root Open_vSwitch row.
func bridgeOps(bridge, port string, ext map[string]string) []ovsdb.Operation {
	return []ovsdb.Operation{
		ovsdb.Insert("Interface", "iface", ovsdb.Row{"name": port, "type": "internal"}),
		ovsdb.Insert("Port", "port", ovsdb.Row{
			"name":         port,
			"interfaces":   ovsdb.Set{ovsdb.NamedUUID("iface")},
			"external_ids": ovsdb.StringMap(ext),
		}),
		ovsdb.Insert("Bridge", "br", ovsdb.Row{
			"name":          bridge,
			"datapath_type": "netdev",
			"ports":         ovsdb.Set{ovsdb.NamedUUID("port")},
		}),
		ovsdb.Mutate("Open_vSwitch", nil, ovsdb.Mut("bridges", "insert", ovsdb.Set{ovsdb.NamedUUID("br")})),
	}
}

func selectOne(t *testing.T, c *ovsdb.Client, table string, where ...ovsdb.Condition) ovsdb.Row {
	t.Helper()
	res, err := c.Transact(testCtx(t), db, ovsdb.Select(table, where))
	if err != nil {
		t.Fatalf("select %s: %v", table, err)
	}
	if len(res[0].Rows) != 1 {
		t.Fatalf("select %s %v: got %d rows, want 1", table, where, len(res[0].Rows))
	}
	return res[0].Rows[0]
}

func mustString(t *testing.T, r ovsdb.Row, col string) string {
	t.Helper()
	s, err := r.GetString(col)
	if err != nil {
		t.Fatalf("GetString(%q): %v", col, err)
	}
	return s
}
