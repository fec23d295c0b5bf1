package nstest

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Probe is one kind of connection a matrix tries.
type Probe struct {
	Name  string
	Proto int // IP protocol: 6 tcp, 17 udp, 1 icmp
	Port  int
}

// MatrixProbes are the probes of the policy tests.
var MatrixProbes = []Probe{{"tcp/80", 6, 80}, {"tcp/5432", 6, 5432}, {"tcp/8080", 6, 8080}, {"udp/53", 17, 53}, {"icmp", 1, 0}}

// Peer is an endpoint of a matrix: its namespace and address; only peers of
// the same Net are tried against each other.
type Peer struct {
	Name, NS, IP, Net string
}

// ServeProbes answers every TCP and UDP probe in namespace ns.
func ServeProbes(t testing.TB, ns string, probes []Probe) *Server {
	var tcp, udp []int
	for _, p := range probes {
		switch p.Proto {
		case 6:
			tcp = append(tcp, p.Port)
		case 17:
			udp = append(udp, p.Port)
		}
	}
	return Serve(t, ns, tcp, udp)
}

// Try reports whether a probe from namespace ns to ip passes within timeout.
func Try(ns, ip string, p Probe, timeout time.Duration) bool {
	switch p.Proto {
	case 6:
		return TCP(ns, ip, p.Port, timeout)
	case 17:
		return UDP(ns, ip, p.Port, timeout)
	}
	return exec.Command("ip", "netns", "exec", ns, "ping", "-c1", "-W", fmt.Sprint(max(int(timeout.Seconds()+0.5), 1)), ip).Run() == nil
}

// Matrix tries every probe between every ordered pair of peers of the same
// network and fails the test where what passes differs from want (the
// oracle). Every peer first answers every probe from its own namespace, so
// that a silent pair is isolation, not a dead server; a matrix in which all
// or nothing is allowed proves nothing and fails too. It returns how many
// probes ran and how many were allowed.
func Matrix(t testing.TB, peers []Peer, probes []Probe, want func(src, dst Peer, p Probe) bool) (int, int) {
	t.Helper()
	for _, p := range peers {
		for _, pr := range probes {
			if !Try(p.NS, p.IP, pr, 2*time.Second) {
				t.Fatalf("%s does not answer %s on its own address", p.Name, pr.Name)
			}
		}
	}
	type job struct {
		src, dst Peer
		pr       Probe
		want     bool
	}
	var jobs []job
	allowed := 0
	for _, s := range peers {
		for _, d := range peers {
			if s.Name == d.Name || s.Net != d.Net {
				continue
			}
			for _, pr := range probes {
				j := job{s, d, pr, want(s, d, pr)}
				if j.want {
					allowed++
				}
				jobs = append(jobs, j)
			}
		}
	}
	if allowed == 0 || allowed == len(jobs) {
		t.Fatalf("a matrix whose %d of %d probes are allowed proves nothing", allowed, len(jobs))
	}
	var mu sync.Mutex
	var bad []string
	sem := make(chan struct{}, 12)
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			got := Try(j.src.NS, j.dst.IP, j.pr, time.Second)
			if !got && j.want { // allowed: a loaded machine may take longer
				got = Try(j.src.NS, j.dst.IP, j.pr, 4*time.Second)
			}
			if got != j.want {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("%s -> %s %s: passed=%v, oracle says %v", j.src.Name, j.dst.Name, j.pr.Name, got, j.want))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d of %d probes disagree with the oracle:\n%s", len(bad), len(jobs), strings.Join(bad, "\n"))
	}
	t.Logf("matrix: %d probes, %d allowed, all as the oracle says", len(jobs), allowed)
	return len(jobs), allowed
}
