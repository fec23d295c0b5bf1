package ovs

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
)

// portReq is one endpoint's port change, waiting to be committed together with
// the changes of other EnsureEndpoint/RemoveEndpoint calls.
type portReq struct {
	name string
	// drop is a port row to take off every bridge (garbage-collected with its
	// interface); "" for none. Dropping and inserting the same name in one
	// transaction works because OVSDB checks name uniqueness after collecting
	// garbage.
	drop ovsdb.UUID
	// insert, if set, adds a port with one interface of the same name.
	insert bool
	tag    int
	ext    map[string]string
	// ofport, if set, is the OpenFlow port number to request (policy flows
	// name the port by it before it exists); qos, if set, the port's QoS.
	ofport int
	qos    ovsdb.UUID

	err  error
	done chan struct{} // closed when err is final
	lead chan struct{} // closed when this request must lead the next batch
	// chosen is set (under batcher.mu) together with closing lead.
	chosen bool
}

// batcher coalesces port changes into few OVSDB transactions by group commit:
// there is no background goroutine. The first caller to arrive becomes the
// leader; it waits up to window (or until max requests wait), takes everything
// pending, commits it in one transaction and answers each caller. Requests
// arriving meanwhile queue up, and when the leader is done it hands leadership
// to the oldest of them, whose batch then holds (up to max of) all that queued
// while the previous commit ran. So commits never overlap, a burst from many workers
// costs a handful of transactions, and a lone caller pays only window extra.
type batcher struct {
	window  time.Duration
	max     int
	timeout time.Duration
	commit  func(ctx context.Context, reqs []*portReq)

	mu      sync.Mutex
	pending []*portReq
	leading bool          // some request holds leadership
	full    chan struct{} // capacity 1: "pending reached max"
}

// do submits r and waits for its outcome or ctx. A caller whose ctx ends while
// its request is still queued withdraws it; one already being committed
// completes without the caller.
func (b *batcher) do(ctx context.Context, r *portReq) error {
	r.done, r.lead = make(chan struct{}), make(chan struct{})
	b.mu.Lock()
	if b.full == nil {
		b.full = make(chan struct{}, 1)
	}
	b.pending = append(b.pending, r)
	if !b.leading {
		b.leading = true
		r.chosen = true
		close(r.lead)
	}
	if len(b.pending) >= b.max {
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
	b.mu.Unlock()

	lead := r.lead
	for {
		select {
		case <-r.done:
			return r.err
		case <-lead:
			b.runBatch(ctx)
			lead = nil // lead once; a nil channel never fires again
		case <-ctx.Done():
			b.withdraw(r)
			select {
			case <-r.done: // finished in the meantime: report the real outcome
				return r.err
			default:
				return ctx.Err()
			}
		}
	}
}

// runBatch is the leader's work: collect, commit, answer, hand over.
func (b *batcher) runBatch(ctx context.Context) {
	t := time.NewTimer(b.window)
	select {
	case <-t.C:
	case <-b.full:
	case <-ctx.Done():
	}
	t.Stop()

	b.mu.Lock()
	// At most max per transaction, so that one commit (and the vswitchd
	// reconfiguration it causes) stays bounded; the rest lead off the next.
	k := min(len(b.pending), b.max)
	batch := slices.Clone(b.pending[:k])
	b.pending = slices.Delete(b.pending, 0, k)
	select { // a "full" signal for this batch must not cut the next one short
	case <-b.full:
	default:
	}
	b.mu.Unlock()

	if len(batch) > 0 {
		// The leader's own deadline must not fail the companions' changes, so
		// the commit gets its own bound.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
		b.commit(cctx, batch)
		cancel()
		for _, r := range batch {
			close(r.done)
		}
	}

	b.mu.Lock()
	b.handOff()
	b.mu.Unlock()
}

// handOff passes leadership to the oldest queued request, or ends it. Called
// with mu held.
func (b *batcher) handOff() {
	if len(b.pending) == 0 {
		b.leading = false
		return
	}
	b.pending[0].chosen = true
	close(b.pending[0].lead)
}

// withdraw removes a request whose caller gave up. If it had been chosen to
// lead, leadership moves on so the others are not stranded.
func (b *batcher) withdraw(r *portReq) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.Index(b.pending, r)
	if i < 0 {
		return // already taken into a batch
	}
	b.pending = slices.Delete(b.pending, i, i+1)
	if r.chosen {
		// Chosen but never started (ctx won the race): leadership moves on.
		b.handOff()
	}
}
