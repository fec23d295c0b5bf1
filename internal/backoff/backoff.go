// Package backoff spaces out retries: capped exponential waits with jitter,
// starting over after a success, so that many agents retrying after one
// outage spread out instead of arriving together.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff is one retrier's state; the zero value is not usable, set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns how long to wait before the next attempt, a random time
// between half and all of the current step, and doubles the step up to Max.
func (b *Backoff) Next() time.Duration {
	if b.cur < b.Min {
		b.cur = b.Min
	}
	d := b.cur
	b.cur = min(2*b.cur, b.Max)
	return d/2 + rand.N(d/2+1)
}

// Reset starts over from Min: the last attempt got somewhere.
func (b *Backoff) Reset() { b.cur = b.Min }
