package state

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestFenceCoversNestedTransactions: a write of desired state inside a nested
// transaction (the Docker plugin releases reservations that way) waits for an
// apply like any other; status and host records never do.
func TestFenceCoversNestedTransactions(t *testing.T) {
	nested := clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ipKey("t", "n", "10.0.0.1")), "=", "held:h1:1:e")},
		[]clientv3.Op{clientv3.OpDelete(ipKey("t", "n", "10.0.0.1"))}, nil)
	for _, c := range []struct {
		ops  []clientv3.Op
		want bool
	}{
		{[]clientv3.Op{nested}, true},
		{[]clientv3.Op{clientv3.OpPut(userKey("t", "n", "h1", "id"), "{}")}, true},
		{[]clientv3.Op{clientv3.OpPut(dockerKey("h1", "id"), "{}")}, true},
		{[]clientv3.Op{clientv3.OpPut(statusKey("h1", "t/e"), "{}")}, false},
		{[]clientv3.Op{clientv3.OpPut(hostKey("h1"), "{}")}, false},
	} {
		if got := writesDesiredState(c.ops); got != c.want {
			t.Errorf("%v: fenced %v, want %v", c.ops, got, c.want)
		}
	}
}
