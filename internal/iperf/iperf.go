// Package iperf runs Debian's iperf3 between two network namespaces and
// reports what the server received: the figure a shaper is judged by.
package iperf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ErrNoIperf means iperf3 is missing.
var ErrNoIperf = errors.New("iperf3 not found (apt-get install iperf3)")

// Result is one run as the server saw it.
type Result struct {
	BitsPerSecond float64 // received payload rate
	Seconds       float64
	LostPercent   float64 // UDP only
	Retransmits   int     // TCP only, from the client
}

// Options of a run.
type Options struct {
	UDP     bool
	Rate    string // UDP offered rate, e.g. "30M"
	Length  int    // UDP datagram payload bytes (keep it under the path MTU)
	Seconds int
	Port    int // 0: 5201
	TOS     int // IP TOS byte of the client's packets; 0: none
}

// Run serves in namespace server on ip and runs the client in namespace client.
func Run(ctx context.Context, client, server, ip string, o Options) (Result, error) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return Result{}, ErrNoIperf
	}
	if o.Seconds <= 0 {
		o.Seconds = 5
	}
	port := o.Port
	if port == 0 {
		port = 5201
	}
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", server, "iperf3", "-s", "-1", "-J", "-B", ip, "-p", strconv.Itoa(port))
	var srvOut strings.Builder
	srv.Stdout = &srvOut
	if err := srv.Start(); err != nil {
		return Result{}, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	args := []string{"netns", "exec", client, "iperf3", "-c", ip, "-p", strconv.Itoa(port), "-t", strconv.Itoa(o.Seconds), "-J"}
	if o.UDP {
		args = append(args, "-u", "-b", o.Rate)
		if o.Length > 0 {
			args = append(args, "-l", strconv.Itoa(o.Length))
		}
	}
	if o.TOS > 0 {
		args = append(args, "-S", strconv.Itoa(o.TOS))
	}
	type end struct {
		Error string `json:"error"`
		End   struct {
			Sum struct {
				LostPercent float64 `json:"lost_percent"`
			} `json:"sum"`
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Seconds       float64 `json:"seconds"`
				LostPercent   float64 `json:"lost_percent"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	var cl end
	var out []byte
	var err error
	// Until the server listens: iperf3 -J reports a refused connection in
	// its JSON (exit status 0 in Debian's 3.12).
	for i := 0; i < 50; i++ {
		cl = end{}
		out, err = exec.CommandContext(ctx, "ip", args...).Output()
		if jerr := json.Unmarshal(out, &cl); err == nil {
			err = jerr
		}
		if err == nil && cl.Error == "" {
			break
		}
		if !strings.Contains(cl.Error, "refused") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || cl.Error != "" {
		return Result{}, fmt.Errorf("iperf3 %s -> %s: %v %s: %.300s", client, ip, err, cl.Error, out)
	}
	_ = srv.Wait()
	var sv end
	if err := json.Unmarshal([]byte(srvOut.String()), &sv); err != nil {
		return Result{}, fmt.Errorf("iperf3 server in %s: %w: %.300s", server, err, srvOut.String())
	}
	r := Result{Retransmits: cl.End.SumSent.Retransmits}
	// The server's own account of what it received (Debian's 3.12 puts it
	// in sum_received for UDP as for TCP).
	r.BitsPerSecond, r.Seconds = sv.End.SumReceived.BitsPerSecond, sv.End.SumReceived.Seconds
	if o.UDP {
		r.LostPercent = max(sv.End.SumReceived.LostPercent, sv.End.Sum.LostPercent)
	}
	if r.BitsPerSecond == 0 {
		return r, fmt.Errorf("iperf3 %s -> %s: the server received nothing: %.300s", client, ip, srvOut.String())
	}
	return r, nil
}
