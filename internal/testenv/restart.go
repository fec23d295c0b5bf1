package testenv

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// gracefulStopLimit bounds how long RestartDaemon waits for dockerd to exit
// after SIGTERM before it kills dockerd and fails the test.
//
// With live-restore dockerd leaves its containers running and exits in well
// under a second. Without it dockerd first stops every running container,
// in parallel, each with its stop timeout (10 s unless --stop-timeout says
// otherwise): `sleep` as PID 1 ignores SIGTERM, so every such container
// takes the full 10 s and is then killed. dockerd gives up on its
// containers after max(15 s, longest stop timeout + 5 s) and exits anyway,
// so 60 s covers any container with a stop timeout up to 55 s, plus margin
// for a loaded machine.
const gracefulStopLimit = 60 * time.Second

// killWait bounds the wait for dockerd to disappear after SIGKILL.
const killWait = 10 * time.Second

// startLimit bounds starting dockerd again, /_ping included. dockerd
// restores its containers before it answers; without live-restore that
// means stopping the ones a killed dockerd left running (their stop
// timeout, 10 s for `sleep`) and starting those with a restart policy.
const startLimit = 2 * time.Minute

// RestartDaemon restarts dockerd gracefully: SIGTERM, wait for dockerd to
// exit (see gracefulStopLimit: about 10 s without live-restore when
// containers run `sleep`, well under a second with it), then start it
// again with the same directories, socket and options, and wait until it
// answers /_ping. containerd keeps running throughout, so with
// live-restore the containers do too.
//
// Only for a daemon started by StartPrivateDocker (or StartDocker without
// NETPLUGIN_TEST_DOCKER_HOST); on a shared one it fails the test. dockerd
// must be running: after KillDaemon use StartDaemon.
func (d *Docker) RestartDaemon(t testing.TB) {
	t.Helper()
	own := d.owned(t, "RestartDaemon")
	if !own.dockerdRunning() {
		t.Fatalf("RestartDaemon: dockerd on %s is not running; after KillDaemon use StartDaemon", d.socket)
	}
	start := time.Now()
	pid := own.dockerd.cmd.Process.Pid
	if err := own.dockerd.terminate(syscall.SIGTERM, gracefulStopLimit); err != nil {
		t.Fatalf("RestartDaemon: stopping dockerd (pid %d): %v", pid, err)
	}
	stopped := time.Since(start)
	d.startDockerd(t, "RestartDaemon")
	t.Logf("dockerd on %s restarted in %v (stop %v, start %v)", d.socket,
		time.Since(start).Round(time.Millisecond), stopped.Round(time.Millisecond),
		(time.Since(start) - stopped).Round(time.Millisecond))
}

// KillDaemon kills dockerd with SIGKILL, as a crash would, and returns once
// it has exited. containerd, the shims and the containers keep running;
// dockerd's socket stays on disk but nothing answers it. Start dockerd
// again with StartDaemon; a test that ends with dockerd down is cleaned up
// all the same.
//
// Only for a daemon started by StartPrivateDocker (or StartDocker without
// NETPLUGIN_TEST_DOCKER_HOST); on a shared one it fails the test.
func (d *Docker) KillDaemon(t testing.TB) {
	t.Helper()
	own := d.owned(t, "KillDaemon")
	if !own.dockerdRunning() {
		t.Fatalf("KillDaemon: dockerd on %s is not running", d.socket)
	}
	pid := own.dockerd.cmd.Process.Pid
	if err := own.dockerd.terminate(syscall.SIGKILL, killWait); err != nil {
		t.Fatalf("KillDaemon: dockerd (pid %d): %v", pid, err)
	}
	t.Logf("dockerd on %s (pid %d) killed", d.socket, pid)
}

// StartDaemon starts dockerd again after KillDaemon, with the same
// directories, socket and options, and waits until it answers /_ping.
// With live-restore it adopts the containers that kept running (about
// 0.2 s). Without it, it stops them before it answers, each with its stop
// timeout (so about 10 s for `sleep` containers, in parallel), then starts
// those whose restart policy says so.
//
// Only for a daemon started by StartPrivateDocker (or StartDocker without
// NETPLUGIN_TEST_DOCKER_HOST); on a shared one it fails the test.
func (d *Docker) StartDaemon(t testing.TB) {
	t.Helper()
	own := d.owned(t, "StartDaemon")
	if own.dockerdRunning() {
		t.Fatalf("StartDaemon: dockerd on %s is already running (pid %d)", d.socket, own.dockerd.cmd.Process.Pid)
	}
	start := time.Now()
	d.startDockerd(t, "StartDaemon")
	t.Logf("dockerd on %s started in %v", d.socket, time.Since(start).Round(time.Millisecond))
}

// startDockerd starts dockerd on the daemon's containerd, failing t on error.
func (d *Docker) startDockerd(t testing.TB, op string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startLimit)
	defer cancel()
	if err := d.own.startDockerd(ctx, startLimit); err != nil {
		t.Fatalf("%s: starting dockerd: %v\nlog tail:\n%s", op, err, d.own.logTail(15))
	}
}

// owned returns the daemon behind d, failing t when the harness did not
// start it: stopping a daemon other tests share would break them.
func (d *Docker) owned(t testing.TB, op string) *daemon {
	t.Helper()
	if d.own == nil {
		t.Fatalf("%s: dockerd on %s was not started by this test but shared through %s (set by the environment or SharedDocker); use StartPrivateDocker for a daemon a test may stop",
			op, d.socket, EnvDockerHost)
	}
	return d.own
}

// dockerdRunning reports whether the latest dockerd has not exited.
func (d *daemon) dockerdRunning() bool {
	return d.dockerd != nil && !d.dockerd.exited()
}
