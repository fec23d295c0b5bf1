package state

import (
	"context"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// NewCache returns a cache of the raw values under prefix, for the external tests.
func NewCache(cli *clientv3.Client, prefix string, poke func(), log *logrus.Entry) *Cache[[]byte] {
	return newCache(cli, prefix, clientv3.GetPrefixRangeEnd(prefix), func(_ string, v []byte) ([]byte, error) { return v, nil }, poke, log, nil)
}

// WatchFrom exposes the watch half of a Cache to the external tests.
func (c *Cache[T]) WatchFrom(ctx context.Context, rev int64) error {
	_, err := c.watch(ctx, rev)
	return err
}

// StoreProblems checks the index copies and the allocator's hint of a store
// dump (key -> value), for the external tests.
func StoreProblems(kvs map[string]string) []string { return storeProblems(kvs) }
