package main

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDockerRunChurn is the user's report of the release race: parallel loops
// of `docker run --rm` on one network, beside two long-running containers
// pinging each other every 20 ms. Docker deletes an endpoint (DeleteEndpoint)
// and only then releases its address (ReleaseAddress); a run in between must
// neither get an address that is still being released nor lose its link to
// that late release, and the neighbours must not lose a packet. Afterwards the
// network holds exactly the two long-running endpoints' addresses.
func TestDockerRunChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("200 docker runs: not in -short")
	}
	const loops, runs = 4, 50
	e := newPluginEnv(t)
	net := e.name + "-churn"
	e.createNet(net, "10.140.0.0/24", "10.140.0.1")
	a, b := e.name+"-a", e.name+"-b"
	e.run(a, net)
	e.run(b, net)
	ipA, ipB := e.ipOf(a, net), e.ipOf(b, net)
	if !e.ping(a, ipB) {
		t.Fatal("the long-running containers cannot ping each other")
	}
	e.mustDocker("exec", "-d", a, "sh", "-c", "ping -i 0.02 -W 1 "+ipB+" >/tmp/ping.log 2>&1")

	start := time.Now()
	var (
		mu       sync.Mutex
		failures []string
		wg       sync.WaitGroup
	)
	for l := 0; l < loops; l++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < runs; i++ {
				out, err := e.dk.CLI(t, "run", "--rm", "--network", net, e.dk.Image, "true")
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("loop %d run %d: %v %s", l, i, err, out))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d x %d docker run --rm in %v (%v per run and loop)", loops, runs, took.Round(time.Millisecond), (took / runs).Round(time.Millisecond))

	time.Sleep(500 * time.Millisecond) // the last pings get their replies
	_, _ = e.docker("exec", a, "killall", "-INT", "ping")
	var log string
	deadline := time.Now().Add(10 * time.Second)
	for {
		log, _ = e.docker("exec", a, "cat", "/tmp/ping.log")
		if strings.Contains(log, "packets transmitted") || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	sent, lost, err := pingLoss(log)
	if err != nil {
		t.Fatalf("%v:\n%s", err, log)
	}
	t.Logf("neighbours: %d pings at 20 ms, %d lost", sent, len(lost))
	if len(failures) > 0 {
		t.Errorf("%d of %d docker runs failed:\n%s", len(failures), loops*runs, strings.Join(failures, "\n"))
	}
	if len(lost) > 0 {
		t.Errorf("the long-running neighbours lost pings %v of %d", lost, sent)
	}
	if !e.ping(a, ipB) {
		t.Error("the long-running containers cannot ping each other after the churn")
	}

	// Every address of the runs is released: the network holds exactly the
	// neighbours' two.
	want := []string{e.ipKey(net, ipA), e.ipKey(net, ipB)}
	sort.Strings(want)
	deadline = time.Now().Add(30 * time.Second)
	for {
		got := e.allocated()
		if strings.Join(got, ",") == strings.Join(want, ",") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("allocations after the churn:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ipKey is the allocation key of ip on the plugin tenant's network.
func (e *pluginEnv) ipKey(network, ip string) string {
	return "/netplugin/v1/alloc/ip/" + e.name + "/" + network + "/" + ip
}

var (
	pingReply = regexp.MustCompile(`seq=(\d+)`)
	pingStats = regexp.MustCompile(`(\d+) packets transmitted`)
)

// pingLoss reads busybox ping's output: how many requests it sent and which
// got no reply, not counting the last one, which may have been in flight when
// ping was stopped.
func pingLoss(log string) (int, []int, error) {
	m := pingStats.FindStringSubmatch(log)
	if m == nil {
		return 0, nil, fmt.Errorf("no ping statistics")
	}
	sent, _ := strconv.Atoi(m[1])
	got := map[int]bool{}
	for _, r := range pingReply.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(r[1])
		got[n] = true
	}
	var lost []int
	for i := 0; i < sent-1; i++ {
		if !got[i] {
			lost = append(lost, i)
		}
	}
	return sent, lost, nil
}
