package nstest

import (
	"encoding/binary"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Stream is a paced, long-lived TCP connection from one namespace to a
// listener in another. It tells how much arrived and when, and how many
// segments the sender had to retransmit: a dropped segment shows there.
type Stream struct {
	mu       sync.Mutex
	received int64
	last     time.Time
	maxGap   time.Duration
	conn     *net.TCPConn
	peer     net.Conn // the listener's end
	stop     chan struct{}
	done     chan struct{}
}

// StartStream connects from namespace from to ip:port (listening in namespace
// to) and sends chunk bytes every interval until the test ends or Stop.
func StartStream(t testing.TB, from, to, ip string, port int, interval time.Duration, chunk int) *Stream {
	t.Helper()
	s := &Stream{stop: make(chan struct{}), done: make(chan struct{})}
	var l net.Listener
	if err := InNS(to, func() error {
		var err error
		l, err = net.Listen("tcp4", net.JoinHostPort(ip, strconv.Itoa(port)))
		return err
	}); err != nil {
		t.Fatalf("stream listener in %s: %v", to, err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		_ = l.Close()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	var c net.Conn
	if err := InNS(from, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", net.JoinHostPort(ip, strconv.Itoa(port)), 5*time.Second)
		return err
	}); err != nil {
		_ = l.Close()
		t.Fatalf("stream %s -> %s:%d: %v", from, ip, port, err)
	}
	s.conn = c.(*net.TCPConn)
	rc, ok := <-accepted
	if !ok {
		t.Fatal("stream: nothing accepted")
	}
	s.peer = rc
	t.Cleanup(func() { s.Stop(); _ = rc.Close() })
	go func() { // receiver
		buf := make([]byte, 64<<10)
		for {
			n, err := rc.Read(buf)
			if n > 0 {
				now := time.Now()
				s.mu.Lock()
				if !s.last.IsZero() && now.Sub(s.last) > s.maxGap {
					s.maxGap = now.Sub(s.last)
				}
				s.received += int64(n)
				s.last = now
				s.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { // sender
		defer close(s.done)
		data := make([]byte, chunk)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
				_ = s.conn.SetWriteDeadline(time.Now().Add(interval))
				_, _ = s.conn.Write(data)
			}
		}
	}()
	return s
}

// Received returns the bytes received so far and when the last ones came.
func (s *Stream) Received() (int64, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received, s.last
}

// MaxGap is the longest pause between two receives so far; ResetGap starts over.
func (s *Stream) MaxGap() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxGap
}

// ResetGap forgets the pauses so far.
func (s *Stream) ResetGap() {
	s.mu.Lock()
	s.maxGap = 0
	s.mu.Unlock()
}

// Lost is how many segments the sender retransmitted because the receiver
// never got them: its retransmissions less those the receiver reported as
// duplicates (D-SACK). A retransmission that was only early (a tail loss
// probe on a loaded machine) is not a loss.
func (s *Stream) Lost() (lost, retransmits uint32) {
	raw, err := s.conn.SyscallConn()
	if err != nil {
		return 0, 0
	}
	_ = raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			retransmits = info.Total_retrans
			if info.Total_retrans > info.Dsack_dups {
				lost = info.Total_retrans - info.Dsack_dups
			}
		}
	})
	return lost, retransmits
}

// Reply makes the listener's end send a byte back: a server that speaks on
// its own, whose segments a cut connection must not let in again.
func (s *Stream) Reply() {
	_ = s.peer.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = s.peer.Write([]byte{0})
}

// Stop ends the sender and closes its connection.
func (s *Stream) Stop() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
		<-s.done
		_ = s.conn.Close()
	}
}

// UDPFlow sends numbered datagrams from one namespace to a port in another
// and counts which arrived.
type UDPFlow struct {
	mu   sync.Mutex
	sent uint64
	got  map[uint64]bool
	stop chan struct{}
	done chan struct{}
	rc   net.PacketConn
}

// StartUDPFlow sends pps datagrams per second from namespace from to ip:port,
// where a receiver in namespace to counts them, until Stop.
func StartUDPFlow(t testing.TB, from, to, ip string, port, pps int) *UDPFlow {
	t.Helper()
	f := &UDPFlow{got: map[uint64]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	if err := InNS(to, func() error {
		var err error
		f.rc, err = net.ListenPacket("udp4", net.JoinHostPort(ip, strconv.Itoa(port)))
		return err
	}); err != nil {
		t.Fatalf("udp receiver in %s: %v", to, err)
	}
	var c net.Conn
	if err := InNS(from, func() error {
		var err error
		c, err = net.Dial("udp4", net.JoinHostPort(ip, strconv.Itoa(port)))
		return err
	}); err != nil {
		t.Fatalf("udp sender in %s: %v", from, err)
	}
	t.Cleanup(func() { f.Stop(); _ = c.Close(); _ = f.rc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := f.rc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 8 {
				f.mu.Lock()
				f.got[binary.BigEndian.Uint64(buf)] = true
				f.mu.Unlock()
			}
		}
	}()
	go func() {
		defer close(f.done)
		tick := time.NewTicker(time.Second / time.Duration(pps))
		defer tick.Stop()
		buf := make([]byte, 32)
		for {
			select {
			case <-f.stop:
				return
			case <-tick.C:
				f.mu.Lock()
				f.sent++
				binary.BigEndian.PutUint64(buf, f.sent)
				f.mu.Unlock()
				_, _ = c.Write(buf)
			}
		}
	}()
	return f
}

// Stop ends sending (what is in flight still counts).
func (f *UDPFlow) Stop() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
		<-f.done
	}
}

// Counts returns how many datagrams were sent and how many distinct ones arrived.
func (f *UDPFlow) Counts() (sent, received uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent, uint64(len(f.got))
}

// Lost returns the numbers of the datagrams sent after the first one that
// arrived and never arrived themselves: what warming up (ARP) cost is not
// counted.
func (f *UDPFlow) Lost() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	first := uint64(0)
	for i := uint64(1); i <= f.sent; i++ {
		if f.got[i] {
			first = i
			break
		}
	}
	var lost []uint64
	for i := first + 1; first > 0 && i <= f.sent; i++ {
		if !f.got[i] {
			lost = append(lost, i)
		}
	}
	return lost
}
