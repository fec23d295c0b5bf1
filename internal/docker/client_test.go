package docker

// Unit tests: a fake dockerd (httptest on a unix socket) checks the client's
// logic without a daemon. integration_test.go runs the same calls against a
// real dockerd.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeDaemon serves h on a fresh unix socket and returns the socket path.
// The socket lives in a short /tmp directory rather than t.TempDir(): the
// latter embeds the test name and can exceed the 108-byte sun_path limit.
func fakeDaemon(t *testing.T, h http.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "np-docker-unit-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func notFound(w http.ResponseWriter, name string) {
	writeJSON(w, http.StatusNotFound, map[string]string{"message": "No such container: " + name})
}

// inspectBody is a trimmed-down real answer of dockerd 20.10.
func inspectBody(id, name string, running bool, pid int) map[string]any {
	status := "exited"
	if running {
		status = "running"
	}
	return map[string]any{
		"Id":   id,
		"Name": "/" + name,
		"State": map[string]any{
			"Status":    status,
			"Running":   running,
			"Paused":    false,
			"Pid":       pid,
			"ExitCode":  0,
			"StartedAt": "2026-11-22T07:54:48.123456789Z",
		},
		"Config": map[string]any{"Image": "netplugin-test/busybox:latest"},
	}
}

func TestNewAcceptsUnixPrefixAndDefault(t *testing.T) {
	if got := New("unix:///run/x.sock").Socket(); got != "/run/x.sock" {
		t.Errorf("New(unix:///run/x.sock).Socket() = %q", got)
	}
	if got := New("").Socket(); got != DefaultSocket {
		t.Errorf("New(\"\").Socket() = %q, want %q", got, DefaultSocket)
	}
}

func TestPing(t *testing.T) {
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_ping" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, "OK")
	}))
	if err := New(sock).Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestPingServerError(t *testing.T) {
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"message": "daemon is shutting down"})
	}))
	err := New(sock).Ping(context.Background())
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 500 {
		t.Fatalf("Ping error = %v, want *APIError 500", err)
	}
	if !strings.Contains(err.Error(), "daemon is shutting down") {
		t.Errorf("error %q lacks the daemon's message", err)
	}
}

func TestPingNoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	err := New(sock).Ping(context.Background())
	if err == nil {
		t.Fatal("Ping on a missing socket succeeded")
	}
	// The message must say where we looked, without net/url's
	// `Get "http://docker/_ping"` noise.
	if !strings.Contains(err.Error(), sock) || strings.Contains(err.Error(), "http://docker") {
		t.Errorf("error %q: want the socket path and no placeholder URL", err)
	}
}

func TestInspectRunning(t *testing.T) {
	const id = "b7a162b086763595eb1559331f134e4ca8275ef0c618c49ee66cd4b86314e4d8"
	var gotPath string
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath = r.URL.EscapedPath()
		writeJSON(w, http.StatusOK, inspectBody(id, "web-1", true, 4242))
	}))
	ctr, err := New(sock).Inspect(context.Background(), "web-1")
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if gotPath != "/containers/web-1/json" {
		t.Errorf("request path = %q", gotPath)
	}
	want := Container{ID: id, Name: "web-1", Pid: 4242, Running: true, Status: "running",
		StartedAt: time.Date(2026, 11, 22, 7, 54, 48, 123456789, time.UTC)}
	if !ctr.StartedAt.Equal(want.StartedAt) {
		t.Errorf("StartedAt = %v, want %v", ctr.StartedAt, want.StartedAt)
	}
	ctr.StartedAt = want.StartedAt
	if ctr != want {
		t.Errorf("Inspect = %+v, want %+v", ctr, want)
	}
	ns, err := ctr.NetNSPath()
	if err != nil || ns != "/proc/4242/ns/net" {
		t.Errorf("NetNSPath = %q, %v; want /proc/4242/ns/net", ns, err)
	}
}

func TestInspectEscapesName(t *testing.T) {
	var gotPath string
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath = r.URL.EscapedPath()
		notFound(w, r.URL.Path)
	}))
	// A "/" or "?" in a name must not change which endpoint is hit.
	_, err := New(sock).Inspect(context.Background(), "a/b?c")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if gotPath != "/containers/a%2Fb%3Fc/json" {
		t.Errorf("request path = %q", gotPath)
	}
}

func TestInspectNotFound(t *testing.T) {
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		notFound(w, "ghost")
	}))
	_, err := New(sock).Inspect(context.Background(), "ghost")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if errors.Is(err, ErrNotRunning) {
		t.Error("a missing container must not match ErrNotRunning")
	}
	msg := err.Error()
	if !strings.Contains(msg, `"ghost"`) || strings.Contains(msg, "\n") {
		t.Errorf("error %q: want one line naming the container", msg)
	}
	// The daemon's own 404 for an empty path segment is not a container
	// miss, so an empty name is refused before any request.
	if _, err := New(sock).Inspect(context.Background(), ""); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Inspect(\"\") = %v, want a plain argument error", err)
	}
}

func TestInspectStopped(t *testing.T) {
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, inspectBody("abc", "stopped-1", false, 0))
	}))
	c := New(sock)
	ctr, err := c.Inspect(context.Background(), "stopped-1")
	if err != nil {
		t.Fatalf("Inspect of a stopped container must succeed: %v", err)
	}
	if ctr.Running || ctr.Pid != 0 {
		t.Errorf("Running=%v Pid=%d, want false 0", ctr.Running, ctr.Pid)
	}
	if _, err := ctr.NetNSPath(); !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "stopped-1") {
		t.Errorf("NetNSPath error = %v, want ErrNotRunning naming stopped-1", err)
	}
	if _, err := c.NetNSPath(context.Background(), "stopped-1"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Client.NetNSPath error = %v, want ErrNotRunning", err)
	}
}

func TestInspectRunningWithoutPid(t *testing.T) {
	// A restarting container can be "running" with no process yet.
	ctr := Container{Name: "r", Running: true, Pid: 0, Status: "restarting"}
	if _, err := ctr.NetNSPath(); !errors.Is(err, ErrNotRunning) {
		t.Errorf("NetNSPath with Pid 0 = %v, want ErrNotRunning", err)
	}
}

func TestInspectNonJSONError(t *testing.T) {
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprint(w, "upstream\nexploded\n")
	}))
	_, err := New(sock).Inspect(context.Background(), "x")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadGateway {
		t.Fatalf("err = %v, want *APIError 502", err)
	}
	if errors.Is(err, ErrNotFound) {
		t.Error("502 must not match ErrNotFound")
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "upstream exploded") {
		t.Errorf("error %q: want the body folded onto one line", msg)
	}
}

func TestInspectBadJSON(t *testing.T) {
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "{not json")
	}))
	if _, err := New(sock).Inspect(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "decoding") {
		t.Errorf("err = %v, want a decoding error", err)
	}
}

func TestInspectTimeout(t *testing.T) {
	release := make(chan struct{})
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	start := time.Now()
	_, err := New(sock).WithTimeout(100*time.Millisecond).Inspect(context.Background(), "slow")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout took %v", d)
	}
	// The caller's shorter deadline wins over the client's timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := New(sock).Inspect(ctx, "slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("caller deadline took %v", d)
	}
}

// eventsDaemon answers /events by streaming whatever is sent on feed,
// closing the stream when feed is closed.
func eventsDaemon(t *testing.T, feed <-chan any, gotFilters chan<- string) string {
	return fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" {
			http.NotFound(w, r)
			return
		}
		if gotFilters != nil {
			gotFilters <- r.URL.Query().Get("filters")
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush() // dockerd flushes headers at once too
		enc := json.NewEncoder(w)
		for {
			select {
			case v, ok := <-feed:
				if !ok {
					return
				}
				_ = enc.Encode(v)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	}))
}

func containerEvent(action, id, name string, attrs map[string]string) map[string]any {
	a := map[string]string{"name": name, "image": "netplugin-test/busybox:latest"}
	for k, v := range attrs {
		a[k] = v
	}
	return map[string]any{
		"status": action, "id": id, "from": "netplugin-test/busybox:latest",
		"Type": "container", "Action": action,
		"Actor":    map[string]any{"ID": id, "Attributes": a},
		"scope":    "local",
		"time":     int64(1795420000),
		"timeNano": int64(1795420000123456789),
	}
}

func recv(t *testing.T, s *EventStream) Event {
	t.Helper()
	select {
	case ev, ok := <-s.C:
		if !ok {
			t.Fatalf("stream closed early: %v", s.Err())
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return Event{}
}

func TestEvents(t *testing.T) {
	feed := make(chan any, 4)
	filters := make(chan string, 1)
	sock := eventsDaemon(t, feed, filters)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(sock).Events(ctx, EventFilter{Containers: []string{"c1"}, Labels: []string{"netplugin=1"}})
	if err != nil {
		t.Fatalf("Events: %v", err)
	}

	var f map[string][]string
	if err := json.Unmarshal([]byte(<-filters), &f); err != nil {
		t.Fatalf("filters not JSON: %v", err)
	}
	if fmt.Sprint(f["type"]) != "[container]" || fmt.Sprint(f["event"]) != "[start die destroy]" ||
		fmt.Sprint(f["container"]) != "[c1]" || fmt.Sprint(f["label"]) != "[netplugin=1]" {
		t.Errorf("filters = %v", f)
	}

	feed <- containerEvent("start", "id1", "c1", nil)
	feed <- map[string]any{"Type": "network", "Action": "connect", "Actor": map[string]any{"ID": "net1"}}
	feed <- containerEvent("die", "id1", "c1", map[string]string{"exitCode": "137"})

	ev := recv(t, s)
	if ev.Action != ActionStart || ev.ID != "id1" || ev.Name != "c1" || ev.ExitCode != -1 ||
		ev.Image != "netplugin-test/busybox:latest" || ev.Time.UnixNano() != 1795420000123456789 {
		t.Errorf("start event = %+v", ev)
	}
	// The network event is dropped; the die event follows.
	ev = recv(t, s)
	if ev.Action != ActionDie || ev.ExitCode != 137 {
		t.Errorf("die event = %+v", ev)
	}
	if err := s.Err(); err != nil {
		t.Errorf("Err while running = %v, want nil", err)
	}

	cancel()
	select {
	case _, ok := <-s.C:
		if ok {
			t.Fatal("unexpected event after cancel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("C not closed after cancel")
	}
	if err := s.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("Err after cancel = %v, want context.Canceled", err)
	}
}

func TestEventsDaemonClosesStream(t *testing.T) {
	feed := make(chan any)
	sock := eventsDaemon(t, feed, nil)
	s, err := New(sock).Events(context.Background(), EventFilter{})
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	close(feed)
	for range s.C {
	}
	if err := s.Err(); err == nil || !strings.Contains(err.Error(), "closed the stream") {
		t.Errorf("Err = %v, want 'closed the stream'", err)
	}
}

func TestEventsHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	_, err := New(sock).WithTimeout(100*time.Millisecond).Events(context.Background(), EventFilter{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}

func TestEventsOutliveTimeout(t *testing.T) {
	// The per-request timeout must not cut an established stream.
	feed := make(chan any, 1)
	sock := eventsDaemon(t, feed, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(sock).WithTimeout(50*time.Millisecond).Events(ctx, EventFilter{})
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	feed <- containerEvent("destroy", "id2", "c2", nil)
	if ev := recv(t, s); ev.Action != ActionDestroy || ev.ID != "id2" {
		t.Errorf("event = %+v", ev)
	}
}

func TestEventsRejected(t *testing.T) {
	sock := fakeDaemon(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "invalid filter 'bogus'"})
	}))
	_, err := New(sock).Events(context.Background(), EventFilter{Actions: []string{"bogus"}})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(err.Error(), "invalid filter") {
		t.Fatalf("err = %v, want *APIError 400 with the daemon's message", err)
	}
}
