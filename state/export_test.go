package state

import "context"

// WatchFrom exposes the watch half of a Cache to the external tests.
func (c *Cache) WatchFrom(ctx context.Context, rev int64) error { return c.watch(ctx, rev) }
