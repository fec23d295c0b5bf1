package state

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/internal/backoff"
)

// Cache mirrors every key of a range: list at revision R, watch from R+1.
// Events only keep the mirror fresh and poke the owner; the owner's periodic
// resync is the real guarantee.
//
//   - The mirror is at the revision of the last event it applied, not at a
//     response's header: while a watch catches up, a batch's header is the
//     store's current revision, ahead of the events that batch carries. A
//     watch that breaks resumes from there; only a compaction (the history
//     is gone) makes the cache list again.
//   - Between attempts it waits a jittered, capped backoff that starts over
//     once an attempt got anywhere, so that many agents re-listing after an
//     outage spread out instead of arriving together.
//   - Each value is decoded once, when it arrives; one that does not decode
//     is kept as an error next to the others, never fatal to the mirror.
type Cache[T any] struct {
	cli        *clientv3.Client
	start, end string
	decode     func(key string, val []byte) (T, error)
	log        *logrus.Entry
	poke       func()
	events     *atomic.Int64 // watch events received, shared by a HostView's caches

	mu      sync.RWMutex
	items   map[string]Item[T]
	rev     int64  // every change up to rev is applied
	gen     uint64 // counts changes of items, for what is derived from them
	listed  bool   // items is a list at some revision, kept up by the watch since
	ready   chan struct{}
	changed chan struct{} // closed and replaced on every update, waking WaitRev
}

// Item is one mirrored key: its decoded value, or why it did not decode.
type Item[T any] struct {
	Value  T
	Err    error
	ModRev int64
}

// Backoff between attempts: from cacheBackoffMin, doubling to cacheBackoffMax.
const (
	cacheBackoffMin = 100 * time.Millisecond
	cacheBackoffMax = 10 * time.Second
)

func newCache[T any](cli *clientv3.Client, start, end string, decode func(string, []byte) (T, error), poke func(), log *logrus.Entry, events *atomic.Int64) *Cache[T] {
	if events == nil {
		events = new(atomic.Int64)
	}
	return &Cache[T]{cli: cli, start: start, end: end, decode: decode, log: log.WithField("range", start), poke: poke,
		events: events, items: map[string]Item[T]{}, ready: make(chan struct{}), changed: make(chan struct{})}
}

// Ready is closed after the first complete list.
func (c *Cache[T]) Ready() <-chan struct{} { return c.ready }

// Events counts the watch events this cache received.
func (c *Cache[T]) Events() int64 { return c.events.Load() }

// Snapshot returns a copy of the values that decoded, and the revision the
// mirror reflects.
func (c *Cache[T]) Snapshot() (map[string]T, int64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]T, len(c.items))
	for k, it := range c.items {
		if it.Err == nil {
			out[k] = it.Value
		}
	}
	return out, c.rev
}

// generation changes whenever the items do.
func (c *Cache[T]) generation() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}

// each calls fn for every item under the read lock.
func (c *Cache[T]) each(fn func(key string, it Item[T])) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for k, it := range c.items {
		fn(k, it)
	}
}

func (c *Cache[T]) isReady() bool {
	select {
	case <-c.ready:
		return true
	default:
		return false
	}
}

// Rev is the revision the mirror reflects.
func (c *Cache[T]) Rev() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

// WaitRev waits until the mirror reflects revision rev (or later): a writer that
// must not race the mirror's owner waits for its own write to arrive. When no
// event of the range carries rev (the write was elsewhere), a progress
// request makes etcd confirm the watch has passed it.
func (c *Cache[T]) WaitRev(ctx context.Context, rev int64) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		c.mu.RLock()
		cur, ch := c.rev, c.changed
		c.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-tick.C:
			_ = c.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (mirror at %d): %w", rev, cur, ctx.Err())
		}
	}
}

// bump wakes waiters; c.mu must be held.
func (c *Cache[T]) bump() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Run keeps the mirror until ctx ends.
func (c *Cache[T]) Run(ctx context.Context) {
	retry := backoff.Backoff{Min: cacheBackoffMin, Max: cacheBackoffMax}
	for ctx.Err() == nil {
		progressed, err := c.attempt(ctx)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			retry.Reset()
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			c.mu.Lock()
			c.listed = false
			c.mu.Unlock()
		}
		wait := retry.Next()
		c.log.WithError(err).WithField("retryIn", wait).Debug("watch ended")
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// attempt lists when the mirror needs it, then watches until the watch ends.
// progressed reports whether it got anything from etcd.
func (c *Cache[T]) attempt(ctx context.Context) (progressed bool, err error) {
	c.mu.RLock()
	listed := c.listed
	c.mu.RUnlock()
	if !listed {
		if err := c.list(ctx); err != nil {
			return false, err
		}
		progressed = true
		c.poke()
	}
	c.mu.RLock()
	from := c.rev + 1
	c.mu.RUnlock()
	got, err := c.watch(ctx, from)
	return progressed || got, err
}

func (c *Cache[T]) list(ctx context.Context) error {
	fresh := map[string]Item[T]{}
	from := c.start
	var rev int64
	for {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		opts := []clientv3.OpOption{clientv3.WithRange(c.end), clientv3.WithLimit(pageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		r, err := c.cli.Get(lctx, from, opts...)
		cancel()
		if err != nil {
			return err
		}
		rev = r.Header.Revision
		for _, kv := range r.Kvs {
			fresh[string(kv.Key)] = c.item(kv)
		}
		if !r.More || len(r.Kvs) == 0 {
			break
		}
		from = string(r.Kvs[len(r.Kvs)-1].Key) + "\x00"
	}
	c.mu.Lock()
	c.items, c.rev, c.listed = fresh, rev, true
	c.gen++
	c.bump()
	if !c.isReady() {
		close(c.ready)
	}
	c.mu.Unlock()
	return nil
}

func (c *Cache[T]) item(kv *mvccpb.KeyValue) Item[T] {
	v, err := c.decode(string(kv.Key), kv.Value)
	return Item[T]{Value: v, Err: err, ModRev: kv.ModRevision}
}

// watch applies events from revision rev on. It returns when the watch ends:
// ErrCompacted when rev is no longer in etcd's history, after which only a
// fresh list is correct.
func (c *Cache[T]) watch(ctx context.Context, rev int64) (got bool, err error) {
	// WithRequireLeader: a member cut off from its cluster ends the watch instead
	// of leaving it silently stuck.
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	for resp := range c.cli.Watch(wctx, c.start, clientv3.WithRange(c.end), clientv3.WithRev(rev)) {
		if err := resp.Err(); err != nil {
			// ErrCompacted included: the history is gone and only a fresh list is correct.
			return got, err
		}
		got = true
		if len(resp.Events) == 0 {
			if resp.IsProgressNotify() {
				// Everything up to the header's revision has been sent.
				c.mu.Lock()
				if resp.Header.Revision > c.rev {
					c.rev = resp.Header.Revision
					c.bump()
				}
				c.mu.Unlock()
			}
			continue
		}
		c.events.Add(int64(len(resp.Events)))
		c.mu.Lock()
		for _, ev := range resp.Events {
			if ev.Type == mvccpb.DELETE {
				delete(c.items, string(ev.Kv.Key))
			} else {
				c.items[string(ev.Kv.Key)] = c.item(ev.Kv)
			}
			c.rev = max(c.rev, ev.Kv.ModRevision)
		}
		c.gen++
		c.bump()
		c.mu.Unlock()
		c.poke()
	}
	return got, errors.New("watch channel closed")
}
