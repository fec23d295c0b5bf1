package ovsdb

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// Whatever ovsdb-server (or anything listening on its socket) sends, the
// client must return an error, never panic: the OVS driver runs inside the
// agent, and a panic there takes every host's dataplane control down with it.

// readRow exercises every getter on every column, as the driver's readers do.
func readRow(r Row) {
	for col := range r {
		_, _ = r.GetString(col)
		_, _ = r.GetInt(col)
		_, _ = r.GetBool(col)
		_, _ = r.GetUUID(col)
		_, _ = r.GetUUIDs(col)
		_, _ = r.GetStrings(col)
		_, _ = r.GetStringMap(col)
	}
	_, _ = r.UUID()
	// A decoded row is also sent back (updates built from selected rows).
	_, _ = json.Marshal(r)
}

func readUpdates(u TableUpdates) {
	for _, tu := range u {
		for _, ru := range tu {
			readRow(ru.Old)
			readRow(ru.New)
		}
	}
}

// FuzzDecodeValue feeds one JSON document to each decoder of OVSDB data: a
// row (atoms, uuids, sets, maps), a monitor's table updates and a transact
// reply's results.
func FuzzDecodeValue(f *testing.F) {
	for _, s := range []string{
		`{"name":"br0","_uuid":["uuid","2f5a"],"tag":["set",[]],"ofport":3,"ext":["map",[["a","b"]]]}`,
		`{"ports":["set",[["uuid","a"],["uuid","b"]]],"stp":true,"rate":1.5}`,
		`{"m":["map",[[1,["uuid","x"]],[2,"y"]]]}`,
		`{"m":["map",[[["set",[]],1]]]}`,
		`{"m":["map",[[["map",[]],1]]]}`,
		`{"n":["named-uuid","row1"],"big":18446744073709551616}`,
		`{"Bridge":{"2f5a":{"new":{"name":"br0"},"old":{"name":"br1"}}}}`,
		`[{"count":1},{"uuid":["uuid","u"]},{"rows":[{"name":"p"}]},{"error":"constraint violation","details":"x"},null]`,
		`["set",[["set",[]]]]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Row
		if json.Unmarshal(b, &r) == nil {
			readRow(r)
		}
		var u TableUpdates
		if json.Unmarshal(b, &u) == nil {
			readUpdates(u)
		}
		var res []OperationResult
		if json.Unmarshal(b, &res) == nil {
			for _, o := range res {
				for _, r := range o.Rows {
					readRow(r)
				}
			}
		}
		if v, err := decodeValue(b); err == nil {
			_, _ = json.Marshal(v)
		}
	})
}

// FuzzServerStream plays a server that answers a transact and a monitor with
// arbitrary bytes: the whole read path (framing, id matching, echo, update
// notifications, result decoding, the monitor callback) on one connection.
func FuzzServerStream(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"result":[{"rows":[{"name":"br0","ports":["set",[["uuid","p1"]]]}]}],"error":null}` +
			`{"id":2,"result":{"Bridge":{"u1":{"new":{"name":"br0"}}}},"error":null}` +
			`{"id":null,"method":"update","params":["netplugin-1",{"Bridge":{"u1":{"old":{"name":"br0"},"new":{"name":"br1"}}}}]}`,
		`{"id":"echo","method":"echo","params":[]}{"id":1,"result":[{"error":"not owner","details":"d"}],"error":null}`,
		`{"id":2,"result":null,"error":{"error":"unknown database"}}{"id":1,"result":[null,null],"error":null}`,
		`{"id":1,"result":[{"count":2}]}{"method":"update","params":["netplugin-9",{}]}{"method":"update","params":[1,2,3]}`,
		`{"id":18446744073709551615,"result":1}{"id":-1}{"id":{"a":1}}`,
		`{"id":2,"result":{"T":{"u":{"new":{"m":["map",[[["set",[]],1]]]}}}}}`,
		`{"id":1,"result":[{"rows":[{"x":["uuid",1]}]}]}`,
		`[1,2]`,
		`{"id":1,"result":`,
	} {
		f.Add([]byte(s))
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	f.Fuzz(func(t *testing.T, stream []byte) {
		cconn, sconn := net.Pipe()
		c := newClient(cconn, logrus.NewEntry(log))
		defer c.Close()
		received := make(chan struct{}, 2)
		go func() {
			defer sconn.Close()
			_ = sconn.SetDeadline(time.Now().Add(5 * time.Second))
			dec := json.NewDecoder(sconn)
			for i := 0; i < 2; i++ {
				var req json.RawMessage
				if dec.Decode(&req) != nil {
					return
				}
				received <- struct{}{}
			}
			_, _ = sconn.Write(stream)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			res, _ := c.Transact(ctx, "Open_vSwitch", Select("Bridge", nil))
			for _, o := range res {
				for _, r := range o.Rows {
					readRow(r)
				}
			}
		}()
		// The transact is id 1 and the monitor id 2, so that seeds can answer each.
		<-received
		initial, _, _ := c.Monitor(ctx, "Open_vSwitch", map[string]MonitorRequest{"Bridge": {}}, readUpdates)
		readUpdates(initial)
		<-done
	})
}
