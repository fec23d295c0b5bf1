// Package testenv gives tests a real, private Docker daemon.
//
// netplugin resolves containers to network namespaces through dockerd, and
// a fake daemon cannot tell whether /proc/<pid>/ns/net really is the
// container's namespace. So tests that need Docker start their own dockerd
// (plus its own containerd) with every path under one /tmp/np-dockerd-*
// directory, never touching a system daemon, and tear it all down again:
// containers, shims, mounts, cgroups and files.
//
// The daemon is started without any network of its own (--bridge=none,
// --iptables=false, --ip-masq=false) and containers run with --network
// none, so test traffic never reaches eth0.
//
// Starting takes 0.2-0.7 s plus about 0.2 s to import the image, and
// stopping about 0.1 s; a package with several Docker tests can still save
// that per test by sharing one daemon:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.SharedDocker(m)) }
//
// Setting NETPLUGIN_TEST_DOCKER_HOST to a unix socket path (for example the
// one scripts/dockerd-up.sh prints) makes every StartDocker reuse that
// daemon instead.
//
// Tests of behaviour across dockerd restarts (a network plugin must keep
// its state and its containers' networking) use StartPrivateDocker, which
// always starts a daemon of the test's own, optionally with live-restore,
// and then RestartDaemon (graceful), or KillDaemon (a crash) and later
// StartDaemon. Only dockerd stops: containerd, and with it the shims and,
// under live-restore, the containers, keeps running.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const (
	// EnvDockerHost names a dockerd unix socket (with or without unix://)
	// that StartDocker uses instead of starting a daemon.
	EnvDockerHost = "NETPLUGIN_TEST_DOCKER_HOST"

	// EnvNoInstall, when set to any value, stops StartDocker from running
	// apt-get to install missing docker.io / busybox-static.
	EnvNoInstall = "NETPLUGIN_TEST_NO_INSTALL"

	// envSharedFailed carries SharedDocker's start-up failure to the tests
	// of the same binary, so each fails at once with the real cause instead
	// of retrying a start that is known to fail.
	envSharedFailed = "NETPLUGIN_TEST_DOCKER_FAILED"

	// DefaultImage is the tag of the busybox image imported into every
	// daemon: no registry is reachable, so images are built locally.
	DefaultImage = "netplugin-test/busybox:latest"

	// ContainerLabel marks containers made by RunContainer.
	ContainerLabel = "netplugin-test"
)

// Docker is a dockerd a test may use.
type Docker struct {
	// Image is a local image tag whose /bin holds busybox-static and its
	// applets (sh, sleep, ip, ping, nc, ...).
	Image string

	socket string
	cli    string  // docker CLI binary
	own    *daemon // nil when attached to an existing daemon
}

// Socket is the daemon's unix socket path (without unix://).
func (d *Docker) Socket() string { return d.socket }

// StartDocker returns a dockerd with Image imported. It reuses the daemon in
// NETPLUGIN_TEST_DOCKER_HOST when set; otherwise it starts a private one
// that t.Cleanup stops and removes, also when the test fails.
//
// Missing prerequisites are installed with apt-get when possible (as root,
// unless NETPLUGIN_TEST_NO_INSTALL is set); if they stay missing, or the
// test is not root, the test is skipped with the reason. A daemon that is
// installed but fails to start fails the test.
func StartDocker(t testing.TB) *Docker {
	t.Helper()
	if msg := os.Getenv(envSharedFailed); msg != "" {
		t.Fatalf("shared dockerd failed to start: %s", msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if sock := os.Getenv(EnvDockerHost); sock != "" {
		d, err := attach(sock)
		if err != nil {
			t.Skipf("%s=%s: %v", EnvDockerHost, sock, err)
		}
		if err := pingUntil(ctx, d.socket, 5*time.Second, nil); err != nil {
			t.Fatalf("%s=%s: daemon not answering: %v", EnvDockerHost, sock, err)
		}
		if err := d.ensureImage(ctx); err != nil {
			t.Fatalf("%s=%s: %v", EnvDockerHost, sock, err)
		}
		return d
	}

	return startPrivate(ctx, t, PrivateOptions{})
}

// PrivateOptions configures a daemon started by StartPrivateDocker. The
// zero value is the daemon StartDocker starts.
type PrivateOptions struct {
	// LiveRestore starts dockerd with --live-restore: containers keep
	// running while dockerd is down (RestartDaemon, KillDaemon) and the
	// next dockerd adopts them. Without it a graceful stop stops every
	// container, and the next dockerd starts those whose restart policy
	// says so.
	LiveRestore bool
}

// StartPrivateDocker starts a new private dockerd with Image imported,
// whatever NETPLUGIN_TEST_DOCKER_HOST says, and stops and removes it in
// t.Cleanup like StartDocker, also when the test fails or leaves dockerd
// down. Tests that stop or restart the daemon (RestartDaemon, KillDaemon,
// StartDaemon) need one: a shared daemon serves other tests.
//
// Prerequisites are handled as in StartDocker: installed when possible,
// else the test is skipped.
func StartPrivateDocker(t testing.TB, opts PrivateOptions) *Docker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return startPrivate(ctx, t, opts)
}

// startPrivate starts a private daemon owned by t.
func startPrivate(ctx context.Context, t testing.TB, opts PrivateOptions) *Docker {
	t.Helper()
	if reason := ensurePrereqs(ctx, t.Logf); reason != "" {
		t.Skip(reason)
	}
	start := time.Now()
	own, err := startDaemon(ctx, opts, t.Logf)
	if err != nil {
		t.Fatalf("starting private dockerd: %v", err)
	}
	d := &Docker{Image: DefaultImage, socket: own.socket, cli: own.cli, own: own}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dockerd log tail (%s):\n%s", own.dir, own.logTail(25))
		}
		stopStart := time.Now()
		if err := own.stop(); err != nil {
			t.Errorf("stopping private dockerd: %v", err)
		} else {
			t.Logf("private dockerd %s stopped and removed in %v", own.dir, time.Since(stopStart).Round(time.Millisecond))
		}
	})
	t.Logf("private dockerd at %s answered in %v (live-restore %v)", d.socket, time.Since(start).Round(time.Millisecond), opts.LiveRestore)
	if err := d.ensureImage(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

// SharedDocker runs m with one private dockerd for the whole test binary:
// it starts the daemon, points NETPLUGIN_TEST_DOCKER_HOST at it so every
// StartDocker reuses it, runs the tests, and tears the daemon down. It
// returns the exit code for os.Exit. If NETPLUGIN_TEST_DOCKER_HOST is
// already set, or Docker is unavailable, it just runs m (StartDocker then
// skips with the reason).
func SharedDocker(m *testing.M) int {
	if os.Getenv(EnvDockerHost) != "" {
		return m.Run()
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "testenv: "+format+"\n", args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	if reason := ensurePrereqs(ctx, logf); reason != "" {
		cancel()
		return m.Run() // each StartDocker skips with the same reason
	}
	start := time.Now()
	own, err := startDaemon(ctx, PrivateOptions{}, logf)
	if err == nil {
		logf("shared dockerd at %s answered in %v", own.socket, time.Since(start).Round(time.Millisecond))
		d := &Docker{Image: DefaultImage, socket: own.socket, cli: own.cli, own: own}
		err = d.ensureImage(ctx)
	}
	cancel()
	if err != nil {
		logf("shared dockerd: %v", err)
		os.Setenv(envSharedFailed, strings.Join(strings.Fields(err.Error()), " "))
		code := m.Run()
		if own != nil {
			if err := own.stop(); err != nil {
				logf("stopping shared dockerd: %v", err)
			}
		}
		if code == 0 {
			code = 1
		}
		return code
	}

	os.Setenv(EnvDockerHost, own.socket)
	code := m.Run()
	os.Unsetenv(EnvDockerHost)
	if err := own.stop(); err != nil {
		logf("stopping shared dockerd: %v", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// attach wraps an existing daemon's socket.
func attach(sock string) (*Docker, error) {
	cli, err := lookBin("docker")
	if err != nil {
		return nil, fmt.Errorf("docker CLI not installed: apt-get install docker.io")
	}
	return &Docker{Image: DefaultImage, socket: strings.TrimPrefix(sock, "unix://"), cli: cli}, nil
}

// CLI runs the docker CLI against this daemon and returns its standard
// output without the trailing newline. The error carries the command and
// the CLI's standard error on one line.
func (d *Docker) CLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	// Not t.Context(): that is cancelled before Cleanup functions run, and
	// cleanups need the CLI too.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return d.run(ctx, nil, args...)
}

// RunContainer starts `sleep 1d` from Image in a container named name, with
// no network (--network none: no veth, no NAT, nothing leaves the host), and
// removes it in t.Cleanup. It returns the full container ID.
//
// When the daemon is shared between packages (NETPLUGIN_TEST_DOCKER_HOST),
// names must be unique across them; include the test name or a random part.
func (d *Docker) RunContainer(t testing.TB, name string) string {
	t.Helper()
	id, err := d.CLI(t, "run", "-d", "--network", "none", "--label", ContainerLabel+"=1",
		"--name", name, d.Image, "sleep", "1d")
	if err != nil {
		t.Fatalf("RunContainer %s: %v", name, err)
	}
	t.Cleanup(func() {
		if d.own != nil && !d.own.dockerdRunning() {
			// The test left dockerd down (KillDaemon); the daemon's
			// teardown, which runs next, removes the container.
			return
		}
		// -f: sleep as PID 1 ignores SIGTERM, so a graceful stop would
		// wait the full 10 s stop timeout.
		if _, err := d.CLI(t, "rm", "-f", "-v", id); err != nil && !strings.Contains(err.Error(), "No such container") {
			t.Errorf("removing container %s: %v", name, err)
		}
	})
	return id
}

// run executes the docker CLI with -H pointing at this daemon.
func (d *Docker) run(ctx context.Context, stdin []byte, args ...string) (string, error) {
	return runDockerCLI(ctx, d.cli, d.socket, stdin, args...)
}

func runDockerCLI(ctx context.Context, cli, socket string, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, cli, append([]string{"-H", "unix://" + socket}, args...)...)
	cmd.Env = cleanEnv()
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := strings.TrimRight(stdout.String(), "\n")
	if err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return out, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err,
			strings.Join(strings.Fields(stderr.String()), " "))
	}
	return out, nil
}

// cleanEnv is the environment for docker, dockerd and containerd: the
// test's own, minus variables that would redirect the CLI to another daemon
// (DOCKER_HOST, DOCKER_CONTEXT, ... conflict with -H) or make dockerd talk
// to systemd (NOTIFY_SOCKET), plus sbin directories, where Debian puts
// dockerd and runc but which a non-login PATH may lack.
func cleanEnv() []string {
	var env []string
	path := ""
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "DOCKER_"), k == "NOTIFY_SOCKET":
			continue
		case k == "PATH":
			path = v
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH="+withSbin(path))
}

func withSbin(path string) string {
	have := map[string]bool{}
	for _, p := range strings.Split(path, ":") {
		have[p] = true
	}
	for _, p := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		if !have[p] {
			if path != "" {
				path += ":"
			}
			path += p
		}
	}
	return path
}

// lookBin finds a binary in PATH or the sbin/bin directories.
func lookBin(name string) (string, error) {
	// Debian's docker.io CLI matches its dockerd (API 1.41); a newer CLI earlier
	// in PATH refuses options such as --mac-address at that API version.
	if name == "docker" {
		if st, err := os.Stat("/usr/bin/docker"); err == nil && st.Mode()&0o111 != 0 {
			return "/usr/bin/docker", nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}
