package testenv

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// tracked records processes of a daemon (with their start stamps, so PID
// reuse cannot fool the check) and its shim sockets, to prove after
// teardown that none of them survived.
type tracked struct {
	procs map[int]string // pid -> ownerStamp
	names map[int]string // pid -> what it was, for messages
	socks []string
}

func (tr *tracked) add(pid int, what string) {
	if tr.procs == nil {
		tr.procs, tr.names = map[int]string{}, map[int]string{}
	}
	if stamp := ownerStamp(pid); stamp != "" {
		tr.procs[pid], tr.names[pid] = stamp, what
	}
}

// addDaemon records the daemon's current dockerd and containerd, and the
// shim sockets of its tasks.
func (tr *tracked) addDaemon(d *Docker) {
	tr.add(d.own.containerd.cmd.Process.Pid, "containerd")
	if d.own.dockerdRunning() {
		tr.add(d.own.dockerd.cmd.Process.Pid, "dockerd")
	}
	tr.socks = append(tr.socks, shimSockets(d.own.dir)...)
}

// addContainer records a container's init process and its shim.
func (tr *tracked) addContainer(pid int, name string) {
	tr.add(pid, "container "+name)
	if ppid := parentPid(pid); ppid > 1 {
		tr.add(ppid, "shim of "+name)
	}
}

// assertTornDown checks that the daemon in dir and every tracked process
// and shim socket are gone.
func (tr *tracked) assertTornDown(t *testing.T, dir string) {
	t.Helper()
	assertGone(t, dir)
	for pid, stamp := range tr.procs {
		if alive(pid, stamp) {
			t.Errorf("%s (pid %d) survived teardown", tr.names[pid], pid)
		}
	}
	for _, s := range tr.socks {
		if _, err := os.Stat(s); err == nil {
			t.Errorf("shim socket %s left behind", s)
		}
	}
}

// alive reports whether the process stamped stamp still runs. A zombie
// counts as gone: it holds no mount, cgroup or socket, only a PID until its
// parent reaps it. Shims and the container processes of killed shims are
// orphans, and the PID 1 of some machines (this one's included) reaps
// orphans only every second or so.
func alive(pid int, stamp string) bool {
	if ownerStamp(pid) != stamp {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		if f := strings.Fields(s[i+1:]); len(f) > 0 {
			return f[0] != "Z" && f[0] != "X"
		}
	}
	return true
}

// parentPid reads the parent PID (field 4 of /proc/<pid>/stat).
func parentPid(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		if f := strings.Fields(s[i+1:]); len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			return ppid
		}
	}
	return 0
}

// containerState returns whether the container runs and its init PID.
func containerState(t *testing.T, d *Docker, id string) (bool, int) {
	t.Helper()
	out, err := d.CLI(t, "inspect", "--format", "{{.State.Running}} {{.State.Pid}}", id)
	if err != nil {
		t.Fatal(err)
	}
	running, pidStr, _ := strings.Cut(out, " ")
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		t.Fatalf("inspect %s: %q", id, out)
	}
	return running == "true", pid
}

// runningPid returns the PID of a running container, failing otherwise.
func runningPid(t *testing.T, d *Docker, id string) int {
	t.Helper()
	running, pid := containerState(t, d, id)
	if !running || pid <= 0 {
		t.Fatalf("container %.12s not running (pid %d)", id, pid)
	}
	return pid
}

// TestRestartLiveRestore: under live-restore a graceful restart keeps the
// container's very process, and containerd with it.
func TestRestartLiveRestore(t *testing.T) {
	var dir string
	var tr tracked
	t.Run("restart", func(t *testing.T) {
		d := StartPrivateDocker(t, PrivateOptions{LiveRestore: true})
		dir = d.own.dir
		id := d.RunContainer(t, "live")
		pid := runningPid(t, d, id)
		stamp := ownerStamp(pid)
		tr.addDaemon(d)
		tr.addContainer(pid, "live")
		ctrd, oldDockerd := d.own.containerd.cmd.Process.Pid, d.own.dockerd.cmd.Process.Pid

		d.RestartDaemon(t)

		tr.addDaemon(d)
		if d.own.containerd.exited() || d.own.containerd.cmd.Process.Pid != ctrd {
			t.Fatal("containerd did not survive the restart")
		}
		if p := d.own.dockerd.cmd.Process.Pid; p == oldDockerd || alive(oldDockerd, tr.procs[oldDockerd]) {
			t.Fatalf("dockerd was not replaced (old pid %d, new %d)", oldDockerd, p)
		}
		if got := runningPid(t, d, id); got != pid || ownerStamp(pid) != stamp {
			t.Fatalf("container pid %d (stamp %q) after restart, want %d (stamp %q)", got, ownerStamp(got), pid, stamp)
		}
		// The new dockerd has adopted it, not just listed it.
		if out, err := d.CLI(t, "exec", id, "echo", "adopted"); err != nil || out != "adopted" {
			t.Fatalf("exec after restart: %q, %v", out, err)
		}
	})
	if dir != "" {
		tr.assertTornDown(t, dir)
	}
}

// TestRestartWithoutLiveRestore: a graceful restart stops the containers;
// the new dockerd starts again those with --restart=always, as new
// processes, and leaves the others stopped.
func TestRestartWithoutLiveRestore(t *testing.T) {
	var dir string
	var tr tracked
	t.Run("restart", func(t *testing.T) {
		d := StartPrivateDocker(t, PrivateOptions{})
		dir = d.own.dir
		always, err := d.CLI(t, "run", "-d", "--network", "none", "--restart=always",
			"--label", ContainerLabel+"=1", "--name", "always", d.Image, "sleep", "1d")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := d.CLI(t, "rm", "-f", "-v", always); err != nil {
				t.Errorf("removing always: %v", err)
			}
		})
		plain := d.RunContainer(t, "plain")
		alwaysPid, plainPid := runningPid(t, d, always), runningPid(t, d, plain)
		tr.addDaemon(d)
		tr.addContainer(alwaysPid, "always")
		tr.addContainer(plainPid, "plain")
		ctrd := d.own.containerd.cmd.Process.Pid

		start := time.Now()
		d.RestartDaemon(t)
		took := time.Since(start)

		tr.addDaemon(d)
		if d.own.containerd.exited() || d.own.containerd.cmd.Process.Pid != ctrd {
			t.Fatal("containerd did not survive the restart")
		}
		// dockerd starts restart-policy containers while restoring, before
		// it answers /_ping; poll anyway, as later versions may not.
		var newPid int
		deadline := time.Now().Add(30 * time.Second)
		for {
			running, pid := containerState(t, d, always)
			if running && pid > 0 {
				newPid = pid
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("--restart=always container not running 30 s after the restart")
			}
			time.Sleep(100 * time.Millisecond)
		}
		tr.addContainer(newPid, "always (restarted)")
		if newPid == alwaysPid && ownerStamp(newPid) == tr.procs[alwaysPid] {
			t.Errorf("--restart=always container kept its process %d", newPid)
		}
		if alive(alwaysPid, tr.procs[alwaysPid]) {
			t.Errorf("--restart=always container's first process %d still runs: was it stopped at all?", alwaysPid)
		}
		if running, _ := containerState(t, d, plain); running {
			t.Errorf("container without restart policy runs after a graceful restart without live-restore")
		}
		// Documents the cost: every container runs `sleep`, which waits
		// out the 10 s stop timeout (in parallel, not one after another).
		t.Logf("restart without live-restore, 2 containers: %v", took.Round(time.Millisecond))
		if took > gracefulStopLimit+startLimit {
			t.Errorf("restart took %v", took)
		}
	})
	if dir != "" {
		tr.assertTornDown(t, dir)
	}
}

// TestKillStartLiveRestore: dockerd crashes, the container keeps running
// while it is down (what a plugin test checks then), and the restarted
// dockerd adopts it. A second daemon is left down at the end of its test,
// which teardown must handle as well.
func TestKillStartLiveRestore(t *testing.T) {
	var dirs []string
	var tr tracked
	t.Run("kill-start", func(t *testing.T) {
		d := StartPrivateDocker(t, PrivateOptions{LiveRestore: true})
		dirs = append(dirs, d.own.dir)
		id := d.RunContainer(t, "survivor")
		pid := runningPid(t, d, id)
		stamp := ownerStamp(pid)
		tr.addDaemon(d)
		tr.addContainer(pid, "survivor")
		oldDockerd := d.own.dockerd.cmd.Process.Pid

		d.KillDaemon(t)

		if alive(oldDockerd, tr.procs[oldDockerd]) {
			t.Fatalf("dockerd %d still alive after KillDaemon", oldDockerd)
		}
		if _, err := d.CLI(t, "ps"); err == nil {
			t.Fatal("docker ps answered with dockerd killed")
		}
		if d.own.containerd.exited() {
			t.Fatal("containerd exited with dockerd")
		}
		// While dockerd is down the container's process and network
		// namespace are untouched.
		if !alive(pid, stamp) {
			t.Fatalf("container process %d died with dockerd", pid)
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/ns/net"); err != nil {
			t.Fatalf("container netns: %v", err)
		}

		d.StartDaemon(t)

		tr.addDaemon(d)
		if got := runningPid(t, d, id); got != pid || ownerStamp(pid) != stamp {
			t.Fatalf("container pid %d after StartDaemon, want %d", got, pid)
		}
		if out, err := d.CLI(t, "exec", id, "echo", "adopted"); err != nil || out != "adopted" {
			t.Fatalf("exec after StartDaemon: %q, %v", out, err)
		}
		// Killed a second time, after a restart: the pidfile the first
		// kill left was handled; this one is left for teardown.
		d.KillDaemon(t)
		d.StartDaemon(t)
		runningPid(t, d, id)
	})
	t.Run("left-down", func(t *testing.T) {
		d := StartPrivateDocker(t, PrivateOptions{LiveRestore: true})
		dirs = append(dirs, d.own.dir)
		id := d.RunContainer(t, "orphan")
		pid := runningPid(t, d, id)
		tr.addDaemon(d)
		tr.addContainer(pid, "orphan")
		d.KillDaemon(t)
		// The test ends with dockerd down and the container running.
	})
	for _, dir := range dirs {
		tr.assertTornDown(t, dir)
	}
}

// fatalRecorder is a testing.TB whose Fatal ends only the calling
// goroutine and keeps the message, to test misuse that must fail a test.
type fatalRecorder struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.msg = strings.TrimSpace(r.msg + "\n" + fmt.Sprintf(format, args...))
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *fatalRecorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

// fatalOf runs f with a recorder and returns the Fatal message, "" if none.
func fatalOf(t testing.TB, f func(testing.TB)) string {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msg
}

// TestSharedDaemonRefused: a daemon reached through
// NETPLUGIN_TEST_DOCKER_HOST cannot be stopped from a test, and
// StartPrivateDocker ignores the variable. (The restart tests above run
// whether or not it is set, for the same reason.)
func TestSharedDaemonRefused(t *testing.T) {
	host := StartPrivateDocker(t, PrivateOptions{})
	hostPid := host.own.dockerd.cmd.Process.Pid
	t.Setenv(EnvDockerHost, "unix://"+host.Socket())

	shared := StartDocker(t)
	if shared.own != nil {
		t.Fatal("StartDocker started a daemon despite " + EnvDockerHost)
	}
	for name, op := range map[string]func(testing.TB){
		"RestartDaemon": shared.RestartDaemon,
		"KillDaemon":    shared.KillDaemon,
		"StartDaemon":   shared.StartDaemon,
	} {
		msg := fatalOf(t, op)
		if !strings.Contains(msg, name) || !strings.Contains(msg, EnvDockerHost) || !strings.Contains(msg, "StartPrivateDocker") {
			t.Errorf("%s on a shared daemon: Fatal %q; want one naming the call, %s and StartPrivateDocker", name, msg, EnvDockerHost)
		}
	}
	if !host.own.dockerdRunning() || host.own.dockerd.cmd.Process.Pid != hostPid {
		t.Fatal("the shared daemon was touched")
	}

	priv := StartPrivateDocker(t, PrivateOptions{})
	if priv.own == nil || priv.Socket() == host.Socket() {
		t.Fatalf("StartPrivateDocker reused %s", host.Socket())
	}
	// Misuse on a private daemon fails too, with the reason.
	if msg := fatalOf(t, priv.StartDaemon); !strings.Contains(msg, "already running") {
		t.Errorf("StartDaemon on a running dockerd: Fatal %q", msg)
	}
	priv.KillDaemon(t)
	if msg := fatalOf(t, priv.RestartDaemon); !strings.Contains(msg, "use StartDaemon") {
		t.Errorf("RestartDaemon on a killed dockerd: Fatal %q", msg)
	}
	if msg := fatalOf(t, priv.KillDaemon); !strings.Contains(msg, "not running") {
		t.Errorf("KillDaemon on a killed dockerd: Fatal %q", msg)
	}
	priv.StartDaemon(t)
	if _, err := priv.CLI(t, "version"); err != nil {
		t.Fatal(err)
	}
}
