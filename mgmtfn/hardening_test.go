package mgmtfn

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
)

// TestSocketIsPrivate: whatever the umask, the plugin socket is root's alone
// from the moment Docker can find it.
func TestSocketIsPrivate(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	s, _ := etcdtest.Store(t)
	dir := t.TempDir()
	p := New(Config{Name: "np", SocketDir: dir, Host: testHost, Store: s, Drivers: map[string]core.Driver{},
		Agent: &fakeAgent{}, Log: etcdtest.Log(t)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := os.Stat(p.Socket())
		if err == nil {
			if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
				t.Fatalf("socket %s: mode %v, want a socket with 0600", p.Socket(), st.Mode())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no socket")
		}
		time.Sleep(time.Millisecond)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("the socket directory holds %v, want only %s", names, filepath.Base(p.Socket()))
	}
}

// TestRequestHardening: oversized bodies and malformed IDs are clean one-line
// errors, never a panic, and change nothing.
func TestRequestHardening(t *testing.T) {
	h := newHarness(t)
	before := etcdtest.Dump(t, h.store)
	huge := append([]byte(`{"NetworkID":"`), bytes.Repeat([]byte("a"), 2<<20)...)
	huge = append(huge, `"}`...)
	if code, out := h.call("/NetworkDriver.CreateNetwork", huge); code == http.StatusOK || !strings.Contains(out["Err"].(string), "too large") {
		t.Fatalf("2 MiB body: %d %v", code, out)
	}
	for _, c := range []struct{ path, body string }{
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":"abc","IPv4Data":[{"Pool":"10.149.0.0/24"}]}`},
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":"` + strings.Repeat("Z", 64) + `","IPv4Data":[{"Pool":"10.149.0.0/24"}]}`},
		{"/NetworkDriver.DeleteNetwork", `{"NetworkID":"../../x"}`},
		{"/NetworkDriver.CreateEndpoint", `{"NetworkID":"` + dockerID('a') + `","EndpointID":"x/y","Interface":{"Address":"10.149.0.2/24"}}`},
		{"/NetworkDriver.Join", `{"NetworkID":"","EndpointID":""}`},
		{"/NetworkDriver.DeleteEndpoint", `{"NetworkID":"` + dockerID('a') + `","EndpointID":"short"}`},
	} {
		code, out := h.call(c.path, []byte(c.body))
		msg, _ := out["Err"].(string)
		if code == http.StatusOK || !strings.Contains(msg, "ID") || strings.Contains(msg, "\n") {
			t.Errorf("%s %s: %d %q", c.path, c.body, code, msg)
		}
	}
	// EndpointOperInfo never fails: Docker would fail the container start.
	if code, _ := h.call("/NetworkDriver.EndpointOperInfo", []byte(`{"NetworkID":"x","EndpointID":"y"}`)); code != http.StatusOK {
		t.Fatalf("EndpointOperInfo with bad IDs: %d", code)
	}
	if after := etcdtest.Dump(t, h.store); after != before {
		t.Fatalf("rejected requests changed the store:\n%s\n%s", before, after)
	}
}
