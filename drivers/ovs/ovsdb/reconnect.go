package ovsdb

import (
	"context"
	"fmt"
	"sync"

	"github.com/sirupsen/logrus"
)

// Reconnecting hands out a connected *Client, dialing a new one when the
// previous connection has ended. It is the simple, explicit alternative to a
// self-healing client: it never replays calls (a lost transact may or may
// not have committed, which only the caller can check), and it re-dials only
// when asked, so callers control retry pacing. Typical use:
//
//	r := ovsdb.NewReconnecting(addr, log, func(ctx context.Context, c *ovsdb.Client) error {
//		initial, _, err := c.Monitor(ctx, "Open_vSwitch", reqs, onUpdate)
//		// ... rebuild the cache from initial ...
//		return err
//	})
//	c, err := r.Client(ctx)
//	if err == nil { _, err = c.Transact(ctx, "Open_vSwitch", ops...) }
//	if errors.Is(err, ovsdb.ErrDisconnected) { /* re-read state, back off, try again */ }
type Reconnecting struct {
	addr      string
	log       *logrus.Entry
	onConnect func(ctx context.Context, c *Client) error

	// mu is held across dialing so concurrent callers share one new
	// connection instead of racing to open several.
	mu     sync.Mutex
	cur    *Client
	closed bool
}

// NewReconnecting returns a Reconnecting for addr (see Dial). onConnect, if
// not nil, runs on every new connection before it is handed out, to restore
// per-connection state such as monitors; if it fails the connection is
// closed and the error returned. No connection is made until Client.
func NewReconnecting(addr string, log *logrus.Entry, onConnect func(ctx context.Context, c *Client) error) *Reconnecting {
	return &Reconnecting{addr: addr, log: log, onConnect: onConnect}
}

// Client returns the current connection if it is up, otherwise dials a new
// one (once, without retrying) and runs onConnect on it.
func (r *Reconnecting) Client(ctx context.Context) (*Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("ovsdb: reconnecting client: %w", ErrClosed)
	}
	if r.cur != nil && r.cur.Err() == nil {
		return r.cur, nil
	}
	c, err := Dial(ctx, r.addr, r.log)
	if err != nil {
		return nil, err
	}
	if r.onConnect != nil {
		if err := r.onConnect(ctx, c); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("ovsdb: on-connect hook: %w", err)
		}
	}
	r.cur = c
	return c, nil
}

// Close closes the current connection and makes later Client calls fail
// with ErrClosed.
func (r *Reconnecting) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.cur != nil {
		return r.cur.Close()
	}
	return nil
}
