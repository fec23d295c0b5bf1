package backoff

import (
	"testing"
	"time"
)

func TestBackoffGrowsJittersAndResets(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	seen := map[time.Duration]bool{}
	step := b.Min
	for i := 0; i < 20; i++ {
		d := b.Next()
		if d < step/2 || d > step {
			t.Fatalf("wait %d: %v, want between %v and %v", i, d, step/2, step)
		}
		seen[d] = true
		step = min(2*step, b.Max)
	}
	if len(seen) < 10 {
		t.Fatalf("only %d distinct waits in 20: not jittered", len(seen))
	}
	b.Reset()
	if d := b.Next(); d > b.Min {
		t.Fatalf("after Reset the wait is %v, want at most %v", d, b.Min)
	}
}
