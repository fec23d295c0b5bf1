// Package etcdtest starts a real, in-process etcd for tests.
package etcdtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/state"
	"github.com/netplugin/netplugin/state/etcdserver"
)

// FreePort returns a loopback TCP port nobody listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs an embedded etcd on free loopback ports, stopped at cleanup.
func Start(t testing.TB) *etcdserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var lastErr error
	for i := 0; i < 3; i++ { // a port can be taken between FreePort and the listen
		e, err := etcdserver.Start(ctx, etcdserver.Config{
			DataDir:   t.TempDir(),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
		})
		if err == nil {
			t.Cleanup(e.Close)
			return e
		}
		lastErr = err
	}
	t.Fatalf("embedded etcd: %v", lastErr)
	return nil
}

// Store starts an etcd and connects a store to it.
func Store(t testing.TB) (*state.Store, *etcdserver.Server) {
	t.Helper()
	e := Start(t)
	s, err := state.Connect(context.Background(), []string{e.Endpoint()}, 5*time.Second, Log(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, e
}

// Log returns a quiet logger for tests. It writes to stderr rather than through
// t, because agent goroutines may log after the test has finished.
func Log(testing.TB) *logrus.Entry {
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	l.SetOutput(os.Stderr)
	return logrus.NewEntry(l)
}

// Dump returns every key and value of the store, to prove that a rejected
// command changed nothing.
func Dump(t testing.TB, s *state.Store) string {
	t.Helper()
	r, err := s.Client().Get(context.Background(), state.Prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range r.Kvs {
		fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
	}
	return b.String()
}

// Metric returns the sum of a Prometheus counter or gauge of the etcd serving
// endpoint, as etcd exposes it on its client URL: over all its label sets, or
// those a name with labels ("name{a=\"b\"}") selects.
func Metric(t testing.TB, endpoint, name string) float64 {
	t.Helper()
	r, err := http.Get(strings.TrimSuffix(endpoint, "/") + "/metrics")
	if err != nil {
		t.Fatalf("etcd metrics: %v", err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatalf("etcd metrics: %v", err)
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || (line[:i] != name && !strings.HasPrefix(line[:i], name+"{") && !strings.HasPrefix(line[:i], strings.TrimSuffix(name, "}"))) {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}
