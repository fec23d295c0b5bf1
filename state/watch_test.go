package state_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// A watch from a compacted revision fails with ErrCompacted; the cache then
// lists again and its mirror is the store as it is, not as it was.
func TestWatchFromCompactedRevisionListsAgain(t *testing.T) {
	s, _ := etcdtest.Store(t)
	cli := s.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, k := range []string{"a", "b", "c"} {
		if _, err := cli.Put(ctx, "/p/"+k, k); err != nil {
			t.Fatal(err)
		}
	}
	r, _ := cli.Get(ctx, "/p/", clientv3.WithPrefix())
	old := r.Header.Revision
	if _, err := cli.Delete(ctx, "/p/a"); err != nil {
		t.Fatal(err)
	}
	put, err := cli.Put(ctx, "/p/d", "d")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, put.Header.Revision); err != nil {
		t.Fatal(err)
	}
	c := state.NewCache(cli, "/p/", func() {}, etcdtest.Log(t))
	if err := c.WatchFrom(ctx, old+1); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("watch from a compacted revision: %v, want ErrCompacted", err)
	}
	go c.Run(ctx)
	<-c.Ready()
	kvs, _ := c.Snapshot()
	if len(kvs) != 3 || kvs["/p/a"] != nil || string(kvs["/p/d"]) != "d" {
		t.Fatalf("mirror after list: %v", kvs)
	}
	// Later changes arrive through the watch.
	w, err := cli.Put(ctx, "/p/e", "e")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitRev(ctx, w.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if kvs, _ := c.Snapshot(); string(kvs["/p/e"]) != "e" {
		t.Fatalf("watch missed /p/e: %v", kvs)
	}
}
