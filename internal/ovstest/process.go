package ovstest

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// daemon is one OVS daemon running as a child of the test process.
type daemon struct {
	name   string
	cmd    *exec.Cmd
	stderr string        // file receiving stdout and stderr
	done   chan struct{} // closed once the process has been reaped
	// graceful, if set, asks the daemon to exit more thoroughly than
	// SIGTERM does; stop falls back to signals if it fails.
	graceful func() error
}

// startDaemon starts bin (an installed OVS daemon) in the instance's
// directory and namespace. The process runs in the foreground from OVS's
// point of view, so the test owns it and can always reap it.
func (i *Instance) startDaemon(name string, args ...string) (*daemon, error) {
	bin, ok := i.bins[name]
	if !ok {
		return nil, fmt.Errorf("%s: binary was not looked up", name)
	}
	argv := append([]string{bin}, args...)
	if i.Netns != "" {
		// "ip netns exec" execs the command in place (no fork), so the pid
		// we hold is the daemon's and signals reach it directly.
		argv = append([]string{i.bins["ip"], "netns", "exec", i.Netns}, argv...)
	}
	logPath := filepath.Join(i.Dir, name+".stderr")
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", logPath, err)
	}
	defer out.Close() // the child has its own copy of the descriptor

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = i.Dir
	cmd.Env = i.env()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// If the test binary is killed (e.g. go test -timeout), take the
		// daemon with it rather than leaking it.
		Pdeathsig: syscall.SIGKILL,
		// Keep terminal signals (^C) for the test binary, which then
		// cleans up in order.
		Setpgid: true,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, stderr: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop asks the daemon to exit (graceful, then SIGTERM, which lets OVS
// remove its sockets and pid file) and kills it if it does not within
// stopTimeout.
func (d *daemon) stop() {
	if d.exited() {
		return
	}
	if d.graceful != nil && d.graceful() == nil {
		select {
		case <-d.done:
			return
		case <-time.After(stopTimeout):
		}
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		_ = d.kill()
	}
}

// kill sends SIGKILL and waits until the process is reaped.
func (d *daemon) kill() error {
	if d.exited() {
		return nil
	}
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil && !d.exited() {
		return fmt.Errorf("signal %s: %w", d.name, err)
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", d.name, d.cmd.Process.Pid)
	}
}

// NewNetns creates a network namespace with a unique name, brings its
// loopback up, and deletes it in t.Cleanup. Call it before Start(...,
// InNetns(name)) so that cleanup, which runs in reverse order, stops the
// daemons before the namespace goes. It skips the test without root or ip.
func NewNetns(t testing.TB) string {
	t.Helper()
	ip, err := findBinary("ip")
	if err != nil {
		t.Skipf("ovstest: ip (iproute2) not installed: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("ovstest: creating network namespaces needs root")
	}
	name := "ovstest-" + strings.ToLower(rand.Text()[:10])
	run := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, ip, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := run("netns", "add", name); err != nil {
		t.Fatalf("ovstest: %v", err)
	}
	t.Cleanup(func() {
		if err := run("netns", "del", name); err != nil {
			t.Errorf("ovstest: %v", err)
		}
	})
	if err := run("-n", name, "link", "set", "lo", "up"); err != nil {
		t.Fatalf("ovstest: %v", err)
	}
	return name
}
