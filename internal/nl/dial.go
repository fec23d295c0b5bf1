package nl

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// DialIn returns a dialer that connects from inside the network namespace at
// path: the socket is made on a thread switched into it for the call, and
// keeps that namespace afterwards. It lets a process reach what listens on an
// address private to another namespace (an agent's health endpoint on that
// namespace's loopback) without anything listening outside it.
func DialIn(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			return nil, fmt.Errorf("own netns: %w", err)
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			return nil, fmt.Errorf("open netns %s: %w", path, err)
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return nil, fmt.Errorf("enter netns %s: %w", path, err)
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				// A thread left in another namespace must never run other
				// goroutines: keep it locked, and it dies with this one.
				runtime.LockOSThread()
			}
		}()
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}
