package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// etcdProc is Debian's etcd in a process of its own, as a cluster member runs:
// its CPU, memory and traffic are its own and can be read from outside. Its
// data lives on tmpfs: these benchmarks measure the control plane, not the disk.
type etcdProc struct {
	cmd     *exec.Cmd
	dir     string
	url     string
	metrics string
	log     bytes.Buffer
}

// etcdBinary is Debian's etcd-server (3.4), what a cluster of hosts runs.
const etcdBinary = "/usr/bin/etcd"

func startEtcdProc(ctx context.Context, name string) (*etcdProc, error) {
	if _, err := os.Stat(etcdBinary); err != nil {
		return nil, fmt.Errorf("%s: %w (apt-get install etcd-server)", etcdBinary, err)
	}
	dir, err := os.MkdirTemp("/dev/shm", "np-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	client, peer, metrics := freePort(), freePort(), freePort()
	e := &etcdProc{dir: dir, url: fmt.Sprintf("http://127.0.0.1:%d", client), metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics)}
	e.cmd = exec.CommandContext(ctx, etcdBinary, "--name", name, "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", e.url, "--advertise-client-urls", e.url,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer),
		"--initial-cluster", fmt.Sprintf("%s=http://127.0.0.1:%d", name, peer),
		"--listen-metrics-urls", fmt.Sprintf("http://127.0.0.1:%d", metrics),
		"--quota-backend-bytes", strconv.Itoa(4<<30), "--log-level", "error", "--logger", "zap")
	e.cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH=")
	e.cmd.Stdout, e.cmd.Stderr = &e.log, &e.log
	if err := e.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := http.Get(strings.TrimSuffix(e.url, "/") + "/health"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return e, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.stop()
	return nil, fmt.Errorf("etcd not healthy after 30s: %s", trimLog(e.log.String()))
}

func (e *etcdProc) stop() {
	if e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		_ = e.cmd.Wait()
	}
	os.RemoveAll(e.dir)
}

// rssMiB is the process's resident set now and at its peak.
func (e *etcdProc) rssMiB() (now, peak float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			now = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return now, peak
}

// etcdCounters are the etcd metrics the benchmarks read.
type etcdCounters struct {
	// unary is the gRPC requests etcd answered other than lease keepalives
	// and watch stream messages (Range, Txn, Put, LeaseGrant, ...).
	unary float64
	// keepalives is the lease keepalive messages etcd received.
	keepalives float64
	// watchMsgs is the watch stream messages etcd received (creates, cancels, progress requests).
	watchMsgs float64
	// sentBytes is what etcd sent its gRPC clients.
	sentBytes float64
}

func (e *etcdProc) counters() (etcdCounters, error) {
	r, err := http.Get(e.metrics)
	if err != nil {
		return etcdCounters{}, err
	}
	defer r.Body.Close()
	var c etcdCounters
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		switch {
		case strings.HasPrefix(name, "grpc_server_handled_total{") && strings.Contains(name, `grpc_type="unary"`):
			c.unary += v
		case strings.HasPrefix(name, "grpc_server_msg_received_total{") && strings.Contains(name, `grpc_method="LeaseKeepAlive"`):
			c.keepalives += v
		case strings.HasPrefix(name, "grpc_server_msg_received_total{") && strings.Contains(name, `grpc_method="Watch"`):
			c.watchMsgs += v
		case name == "etcd_network_client_grpc_sent_bytes_total":
			c.sentBytes += v
		}
	}
	return c, sc.Err()
}
