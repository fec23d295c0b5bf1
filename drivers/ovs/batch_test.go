package ovs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
)

// fakeCommit records batches and fails the requests named "bad".
type fakeCommit struct {
	delay    time.Duration
	inFlight atomic.Int32
	overlap  atomic.Bool
	mu       sync.Mutex
	sizes    []int
	block    chan struct{} // if set, commits wait for it
}

func (f *fakeCommit) commit(ctx context.Context, reqs []*portReq) {
	if f.inFlight.Add(1) > 1 {
		f.overlap.Store(true)
	}
	defer f.inFlight.Add(-1)
	if f.block != nil {
		<-f.block
	}
	time.Sleep(f.delay)
	f.mu.Lock()
	f.sizes = append(f.sizes, len(reqs))
	f.mu.Unlock()
	for _, r := range reqs {
		if r.name == "bad" {
			r.err = errors.New("refused")
		}
	}
}

func TestBatcherCoalesces(t *testing.T) {
	f := &fakeCommit{delay: 2 * time.Millisecond}
	b := &batcher{window: 200 * time.Microsecond, max: 16, timeout: time.Second, commit: f.commit}
	const n = 200
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("p%d", i)
			if i == 7 {
				name = "bad"
			}
			errs[i] = b.do(context.Background(), &portReq{name: name})
		}()
	}
	wg.Wait()
	total := 0
	for _, s := range f.sizes {
		total += s
		if s > 16 {
			t.Errorf("batch of %d exceeds max 16", s)
		}
	}
	if total != n {
		t.Fatalf("committed %d requests, want %d", total, n)
	}
	if len(f.sizes) > n/4 {
		t.Errorf("%d commits for %d concurrent requests: batching does not work (%v)", len(f.sizes), n, f.sizes)
	}
	if f.overlap.Load() {
		t.Error("two commits ran at once")
	}
	for i, err := range errs {
		if (i == 7) != (err != nil) {
			t.Errorf("request %d: %v", i, err)
		}
	}
	if b.leading || len(b.pending) != 0 {
		t.Errorf("batcher not idle afterwards: leading=%v pending=%d", b.leading, len(b.pending))
	}
}

// A caller that gives up while queued withdraws; the others, including one
// chosen to lead next, still get their commit.
func TestBatcherWithdraw(t *testing.T) {
	f := &fakeCommit{block: make(chan struct{})}
	b := &batcher{window: 100 * time.Microsecond, max: 8, timeout: time.Second, commit: f.commit}
	first := make(chan error, 1)
	go func() { first <- b.do(context.Background(), &portReq{name: "first"}) }()
	for f.inFlight.Load() == 0 { // the first batch is committing (blocked)
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	quitter := make(chan error, 1)
	go func() { quitter <- b.do(ctx, &portReq{name: "quitter"}) }()
	waitPending(t, b, 1)
	patient := make(chan error, 1)
	go func() { patient <- b.do(context.Background(), &portReq{name: "patient"}) }()
	waitPending(t, b, 2)
	cancel()
	if err := <-quitter; !errors.Is(err, context.Canceled) {
		t.Fatalf("quitter: %v", err)
	}
	close(f.block)
	for name, ch := range map[string]chan error{"first": first, "patient": patient} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s stranded", name)
		}
	}
	for _, s := range f.sizes {
		if s > 1 {
			t.Errorf("withdrawn request was committed: sizes %v", f.sizes)
		}
	}
}

func waitPending(t *testing.T, b *batcher, n int) {
	t.Helper()
	for i := 0; i < 5000; i++ {
		b.mu.Lock()
		got := len(b.pending)
		b.mu.Unlock()
		if got == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("never %d pending", n)
}

func TestRecordsAndTrunks(t *testing.T) {
	recs := map[string]netRecord{
		"t/a": {FP: "f1", Encap: core.EncapVLAN, Tag: 10, VLAN: 10},
		"t/b": {FP: "f2", Encap: core.EncapVXLAN, Tag: 5000, VLAN: 4094},
	}
	ext := map[string]string{"other": "x", extNetPrefix + "t/bad": "garbage"}
	for k, r := range recs {
		ext[extNetPrefix+k] = r.String()
	}
	got := records(ext)
	if len(got) != 2 || got["t/a"] != recs["t/a"] || got["t/b"] != recs["t/b"] {
		t.Fatalf("records round trip: %+v", got)
	}
	if v, err := allocLocalVLAN(recs, "t/c"); err != nil || v != 4093 {
		t.Errorf("alloc = %d, %v; want 4093 (4094 is taken)", v, err)
	}
	if v, _ := allocLocalVLAN(recs, "t/b"); v != 4094 {
		t.Errorf("realloc for the owner = %d, want its own 4094", v)
	}
	if tr := trunks(recs, core.EncapVLAN); len(tr) != 1 || tr[0] != 10 {
		t.Errorf("vlan trunks %v", tr)
	}
	if tr := trunks(nil, core.EncapVXLAN); len(tr) != 1 || tr[0] != 4095 {
		t.Errorf("empty trunks %v, want [4095] (never all VLANs)", tr)
	}
	if n := tunnelName("10.99.0.2"); n != "npt0a630002" || len(n) > 15 {
		t.Errorf("tunnel name %q", n)
	}
}

// Callers giving up at random moments never strand the others: whoever is
// still waiting gets an answer, and the batcher ends idle.
func TestBatcherCancelStress(t *testing.T) {
	f := &fakeCommit{delay: 300 * time.Microsecond}
	b := &batcher{window: 100 * time.Microsecond, max: 4, timeout: time.Second, commit: f.commit}
	var wg sync.WaitGroup
	var done atomic.Int32
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			if i%3 == 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, time.Duration(i%7)*200*time.Microsecond)
				defer cancel()
			}
			err := b.do(ctx, &portReq{name: fmt.Sprintf("p%d", i)})
			if err != nil && i%3 != 0 {
				t.Errorf("request %d: %v", i, err)
			}
			done.Add(1)
		}()
	}
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("stranded: %d of 300 returned", done.Load())
	}
	if b.leading || len(b.pending) != 0 {
		t.Errorf("batcher not idle afterwards: leading=%v pending=%d", b.leading, len(b.pending))
	}
}
