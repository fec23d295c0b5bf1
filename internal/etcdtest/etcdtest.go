// Package etcdtest starts a real, in-process etcd for tests.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/state"
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
func Start(t testing.TB) *state.Embedded {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var lastErr error
	for i := 0; i < 3; i++ { // a port can be taken between FreePort and the listen
		e, err := state.StartEmbedded(ctx, state.EmbeddedConfig{
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
func Store(t testing.TB) (*state.Store, *state.Embedded) {
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
