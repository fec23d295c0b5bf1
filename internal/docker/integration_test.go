package docker_test

// Integration tests against a real dockerd started by internal/testenv
// (one per test binary, see TestMain). They skip, with the reason, where
// Docker cannot run (not root, packages not installable).

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/docker"
	"github.com/netplugin/netplugin/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.SharedDocker(m)) }

// uniqueName gives each container a name no other test, or test package
// sharing the daemon, uses.
func uniqueName(t *testing.T) string {
	base := regexp.MustCompile(`[^a-zA-Z0-9_.-]+`).ReplaceAllString(t.Name(), "-")
	return fmt.Sprintf("np-%s-%06x", strings.ToLower(base), rand.Uint32()&0xffffff)
}

func setup(t *testing.T) (*testenv.Docker, *docker.Client, context.Context) {
	t.Helper()
	d := testenv.StartDocker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	c := docker.New(d.Socket())
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	return d, c, ctx
}

func TestIntegrationInspectRunning(t *testing.T) {
	d, c, ctx := setup(t)
	name := uniqueName(t)
	id := d.RunContainer(t, name)

	for _, ref := range []string{name, id, id[:12]} {
		ctr, err := c.Inspect(ctx, ref)
		if err != nil {
			t.Fatalf("Inspect(%s): %v", ref, err)
		}
		if ctr.ID != id || ctr.Name != name || !ctr.Running || ctr.Pid <= 0 || ctr.Status != "running" {
			t.Errorf("Inspect(%s) = %+v; want ID %s, Name %s, running with a pid", ref, ctr, id, name)
		}
		if ctr.StartedAt.IsZero() {
			t.Errorf("Inspect(%s): StartedAt not set", ref)
		}
		ns, err := ctr.NetNSPath()
		if err != nil {
			t.Fatalf("NetNSPath: %v", err)
		}
		if ns != fmt.Sprintf("/proc/%d/ns/net", ctr.Pid) {
			t.Errorf("NetNSPath = %s for pid %d", ns, ctr.Pid)
		}
		// The namespace must exist and, with --network none, must not be
		// ours: this is what the agent will setns into.
		theirs, err := os.Readlink(ns)
		if err != nil {
			t.Fatalf("namespace %s: %v", ns, err)
		}
		ours, err := os.Readlink("/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		if theirs == ours {
			t.Errorf("container netns %s is the test's own", theirs)
		}
	}

	ns, err := c.NetNSPath(ctx, name)
	if err != nil || !strings.HasPrefix(ns, "/proc/") {
		t.Errorf("Client.NetNSPath(%s) = %q, %v", name, ns, err)
	}
}

func TestIntegrationNotFound(t *testing.T) {
	_, c, ctx := setup(t)
	name := uniqueName(t)
	_, err := c.Inspect(ctx, name)
	if !errors.Is(err, docker.ErrNotFound) {
		t.Fatalf("Inspect of a missing container: %v, want ErrNotFound", err)
	}
	if msg := err.Error(); !strings.Contains(msg, name) || strings.Contains(msg, "\n") {
		t.Errorf("error %q: want one line naming %s", msg, name)
	}
	t.Logf("missing container error: %v", err)
}

func TestIntegrationNotRunning(t *testing.T) {
	d, c, ctx := setup(t)

	stopped := uniqueName(t)
	d.RunContainer(t, stopped)
	// kill, not stop: sleep as PID 1 ignores SIGTERM.
	if _, err := d.CLI(t, "kill", stopped); err != nil {
		t.Fatal(err)
	}
	// `docker kill` returns once the signal is sent; wait for the exit.
	if _, err := d.CLI(t, "wait", stopped); err != nil {
		t.Fatal(err)
	}

	created := uniqueName(t) + "-created"
	if _, err := d.CLI(t, "create", "--network", "none", "--name", created, d.Image, "sleep", "1d"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = d.CLI(t, "rm", "-f", created) })

	for _, name := range []string{stopped, created} {
		ctr, err := c.Inspect(ctx, name)
		if err != nil {
			t.Fatalf("Inspect(%s) of an existing container must succeed: %v", name, err)
		}
		if ctr.Running || ctr.Pid != 0 {
			t.Errorf("Inspect(%s): Running=%v Pid=%d status %s; want not running", name, ctr.Running, ctr.Pid, ctr.Status)
		}
		_, err = ctr.NetNSPath()
		if !errors.Is(err, docker.ErrNotRunning) || errors.Is(err, docker.ErrNotFound) {
			t.Errorf("NetNSPath(%s) = %v, want ErrNotRunning", name, err)
		}
		if _, err := c.NetNSPath(ctx, name); !errors.Is(err, docker.ErrNotRunning) {
			t.Errorf("Client.NetNSPath(%s) = %v, want ErrNotRunning", name, err)
		}
	}
}

func TestIntegrationEvents(t *testing.T) {
	d, c, ctx := setup(t)
	name := uniqueName(t)

	evCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribe before the container exists: Events returns once the
	// daemon accepted the subscription, so the start cannot be missed.
	s, err := c.Events(evCtx, docker.EventFilter{Containers: []string{name}})
	if err != nil {
		t.Fatalf("Events: %v", err)
	}

	started := time.Now()
	id := d.RunContainer(t, name)
	next := func(want string) docker.Event {
		t.Helper()
		select {
		case ev, ok := <-s.C:
			if !ok {
				t.Fatalf("stream ended waiting for %s: %v", want, s.Err())
			}
			if ev.Action != want || ev.ID != id || ev.Name != name {
				t.Fatalf("event %+v; want %s of %s (%s)", ev, want, name, id)
			}
			return ev
		case <-time.After(15 * time.Second):
			t.Fatalf("no %s event within 15s", want)
		}
		return docker.Event{}
	}
	ev := next(docker.ActionStart)
	if ev.Time.Before(started.Add(-time.Second)) || ev.Image != d.Image {
		t.Errorf("start event %+v: time before the run, or image not %s", ev, d.Image)
	}

	if _, err := d.CLI(t, "kill", name); err != nil {
		t.Fatal(err)
	}
	if ev := next(docker.ActionDie); ev.ExitCode != 137 {
		t.Errorf("die exit code %d, want 137 (SIGKILL)", ev.ExitCode)
	}
	if _, err := d.CLI(t, "rm", name); err != nil {
		t.Fatal(err)
	}
	next(docker.ActionDestroy)

	cancel()
	for range s.C {
	}
	if err := s.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("Err after cancel = %v, want context.Canceled", err)
	}
}
