package state_test

import (
	"context"
	"errors"
	"fmt"
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

// TestWatchCatchUpIsAtItsEvents: a watch that starts behind the store gets
// its history in batches whose header is the store's current revision, ahead
// of the events they carry. The mirror is at the last event it applied, so a
// writer waiting for its revision sees its own write in the mirror, not only
// the first batch.
func TestWatchCatchUpIsAtItsEvents(t *testing.T) {
	s, _ := etcdtest.Store(t)
	cli := s.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start, err := cli.Get(ctx, "/c/")
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000 // three catch-up batches of 1000 revisions
	var last int64
	for i := 0; i < n; i++ {
		r, err := cli.Put(ctx, fmt.Sprintf("/c/%04d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	c := state.NewCache(cli, "/c/", func() {}, etcdtest.Log(t))
	go func() { _ = c.WatchFrom(ctx, start.Header.Revision+1) }()
	if err := c.WaitRev(ctx, last); err != nil {
		t.Fatal(err)
	}
	if kvs, rev := c.Snapshot(); len(kvs) != n {
		t.Fatalf("mirror at revision %d (waited for %d) holds %d of %d keys", rev, last, len(kvs), n)
	}
}

// TestWaitRevForAWriteElsewhere: a revision no event of the range carries
// (a write under another prefix) is confirmed by a progress request.
func TestWaitRevForAWriteElsewhere(t *testing.T) {
	s, _ := etcdtest.Store(t)
	cli := s.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := state.NewCache(cli, "/w/", func() {}, etcdtest.Log(t))
	go c.Run(ctx)
	<-c.Ready()
	r, err := cli.Put(ctx, "/elsewhere", "x")
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := c.WaitRev(wctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
}
