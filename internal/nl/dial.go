package nl

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// DialIn returns a dialer that connects from inside the network namespace at
// path: the socket is made on a thread switched into it for the call, and
// keeps that namespace afterwards. It lets a process reach what listens on an
// address private to another namespace (an agent's health endpoint on that
// namespace's loopback) without anything listening outside it.
func DialIn(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNS(path, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// ListenPacketIn opens a packet socket (e.g. "ip4:icmp" for echoes) inside the
// network namespace at path.
func ListenPacketIn(path, network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := inNS(path, func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// inNS runs fn on a thread switched into the namespace at path, and back.
// Sockets fn makes stay in that namespace.
func inNS(path string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("own netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// A thread left in another namespace must never run other
			// goroutines: keep it locked, and it dies with this one.
			runtime.LockOSThread()
		}
	}()
	return fn()
}

// SetARPRetrans sets how often the interface ifName inside the namespace at
// path retries an unanswered ARP request (net.ipv4.neigh.IF.retrans_time_ms;
// the kernel's default is 1 s). /proc/sys/net belongs to the namespace of the
// thread that opens it, hence the switch.
func SetARPRetrans(path, ifName string, d time.Duration) error {
	if strings.ContainsAny(ifName, "/.") || ifName == "" {
		return fmt.Errorf("interface name %q", ifName)
	}
	return inNS(path, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/neigh/"+ifName+"/retrans_time_ms", []byte(strconv.FormatInt(d.Milliseconds(), 10)), 0o644)
	})
}
