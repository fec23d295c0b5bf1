package nstest

// Probes made in-process: sockets opened inside a test namespace by a thread
// switched into it for the call (a socket keeps the namespace it was made
// in), so that a connectivity matrix of hundreds of probes costs no fork.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// InNS runs f on an OS thread inside the named namespace.
func InNS(ns string, f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			runtime.LockOSThread() // never let a thread in the wrong namespace run other goroutines
		}
	}()
	return f()
}

// Server listens in a namespace on TCP ports (accepting and closing) and UDP
// ports (echoing), and records who got through.
type Server struct {
	mu       sync.Mutex
	accepted map[int][]string // TCP port -> peer addresses accepted
	udp      map[int][]string // UDP port -> peer addresses answered
}

// Serve starts a Server in ns on every address of the namespace; it stops at
// cleanup.
func Serve(t testing.TB, ns string, tcp, udp []int) *Server {
	t.Helper()
	s := &Server{accepted: map[int][]string{}, udp: map[int][]string{}}
	var closers []func()
	t.Cleanup(func() {
		for _, c := range closers {
			c()
		}
	})
	err := InNS(ns, func() error {
		for _, p := range tcp {
			l, err := net.Listen("tcp4", ":"+strconv.Itoa(p))
			if err != nil {
				return err
			}
			closers = append(closers, func() { _ = l.Close() })
			go func(port int) {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
					s.mu.Lock()
					s.accepted[port] = append(s.accepted[port], host)
					s.mu.Unlock()
					_ = c.Close()
				}
			}(p)
		}
		for _, p := range udp {
			c, err := net.ListenPacket("udp4", ":"+strconv.Itoa(p))
			if err != nil {
				return err
			}
			closers = append(closers, func() { _ = c.Close() })
			go func(port int) {
				buf := make([]byte, 2048)
				for {
					n, from, err := c.ReadFrom(buf)
					if err != nil {
						return
					}
					host, _, _ := net.SplitHostPort(from.String())
					s.mu.Lock()
					s.udp[port] = append(s.udp[port], host)
					s.mu.Unlock()
					_, _ = c.WriteTo(buf[:n], from)
				}
			}(p)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("serve in %s: %v", ns, err)
	}
	return s
}

// Accepted returns the peers accepted on a TCP port so far.
func (s *Server) Accepted(port int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.accepted[port]...)
}

// TCP reports whether a TCP handshake from ns to ip:port completes within timeout.
func TCP(ns, ip string, port int, timeout time.Duration) bool {
	var c net.Conn
	err := InNS(ns, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp4", net.JoinHostPort(ip, strconv.Itoa(port)))
		return err
	})
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// UDP reports whether a datagram from ns to ip:port is echoed within timeout
// (two tries, in case the first one waited for ARP).
func UDP(ns, ip string, port int, timeout time.Duration) bool {
	var c net.Conn
	if err := InNS(ns, func() error {
		var err error
		c, err = net.Dial("udp4", net.JoinHostPort(ip, strconv.Itoa(port)))
		return err
	}); err != nil {
		return false
	}
	defer c.Close()
	buf := make([]byte, 64)
	for try := 0; try < 2; try++ {
		if _, err := c.Write([]byte("probe")); err != nil {
			return false
		}
		_ = c.SetReadDeadline(time.Now().Add(timeout / 2))
		if _, err := c.Read(buf); err == nil {
			return true
		} else if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
			return false
		}
	}
	return false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
