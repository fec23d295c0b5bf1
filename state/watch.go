package state

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Cache mirrors every key under a prefix: list at revision R, watch from R+1, and
// list again after a compaction or a broken watch. Events only keep the mirror
// fresh and poke the owner; the owner's periodic resync is the real guarantee.
type Cache struct {
	cli    *clientv3.Client
	prefix string
	log    *logrus.Entry
	poke   func()

	mu     sync.RWMutex
	kvs    map[string][]byte
	rev    int64
	synced bool
	ready  chan struct{}
	// changed is closed and replaced on every update, waking WaitRev.
	changed chan struct{}
}

// NewCache returns a cache of prefix; poke is called (non-blocking) after every change.
func NewCache(cli *clientv3.Client, prefix string, poke func(), log *logrus.Entry) *Cache {
	return &Cache{cli: cli, prefix: prefix, log: log, poke: poke, kvs: map[string][]byte{}, ready: make(chan struct{}),
		changed: make(chan struct{})}
}

// Ready is closed after the first complete list.
func (c *Cache) Ready() <-chan struct{} { return c.ready }

// Snapshot returns a copy of the mirror and the revision it reflects.
func (c *Cache) Snapshot() (map[string][]byte, int64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string][]byte, len(c.kvs))
	for k, v := range c.kvs {
		out[k] = v
	}
	return out, c.rev
}

// WaitRev waits until the mirror reflects revision rev (or later): a writer that
// must not race the mirror's owner waits for its own write to arrive.
func (c *Cache) WaitRev(ctx context.Context, rev int64) error {
	for {
		c.mu.RLock()
		cur, ch := c.rev, c.changed
		c.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (mirror at %d): %w", rev, cur, ctx.Err())
		}
	}
}

// bump wakes waiters; c.mu must be held.
func (c *Cache) bump() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Run keeps the mirror until ctx ends.
func (c *Cache) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.listAndWatch(ctx)
		if ctx.Err() != nil {
			return
		}
		c.log.WithError(err).WithField("prefix", c.prefix).Warn("watch ended; listing again")
		// Capped, jittered backoff so that many agents do not hammer a recovering etcd in step.
		sleep := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(sleep):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (c *Cache) listAndWatch(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	r, err := c.cli.Get(lctx, c.prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return err
	}
	fresh := make(map[string][]byte, len(r.Kvs))
	for _, kv := range r.Kvs {
		fresh[string(kv.Key)] = kv.Value
	}
	c.mu.Lock()
	c.kvs, c.rev = fresh, r.Header.Revision
	c.bump()
	if !c.synced {
		c.synced = true
		close(c.ready)
	}
	c.mu.Unlock()
	c.poke()
	return c.watch(ctx, r.Header.Revision+1)
}

// watch applies events from revision rev on. It returns when the watch ends:
// ErrCompacted when rev is no longer in etcd's history, after which only a
// fresh list is correct.
func (c *Cache) watch(ctx context.Context, rev int64) error {
	// WithRequireLeader: a member cut off from its cluster ends the watch instead
	// of leaving it silently stuck.
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	for resp := range c.cli.Watch(wctx, c.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if err := resp.Err(); err != nil {
			// ErrCompacted included: the history is gone and only a fresh list is correct.
			return err
		}
		c.mu.Lock()
		for _, ev := range resp.Events {
			if ev.Type == mvccpb.DELETE {
				delete(c.kvs, string(ev.Kv.Key))
			} else {
				c.kvs[string(ev.Kv.Key)] = ev.Kv.Value
			}
		}
		c.rev = resp.Header.Revision
		c.bump()
		c.mu.Unlock()
		if len(resp.Events) > 0 {
			c.poke()
		}
	}
	return errors.New("watch channel closed")
}
