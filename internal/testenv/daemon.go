package testenv

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Layout of a daemon directory, shared with scripts/dockerd-up.sh:
//
//	owner                        "<pid> <starttime>" of the test process (Go only)
//	daemon.json                  dockerd config (keeps key.json out of /etc/docker)
//	docker.sock docker.pid dockerd.log
//	data/ exec/                  dockerd --data-root / --exec-root
//	containerd/config.toml containerd/containerd.sock containerd/{root,state,opt}
//	containerd.pid containerd.log
//
// The directory's base name doubles as the cgroup parent of its containers.
const dirPrefix = "np-dockerd-"

// sunPathMax is the size of sockaddr_un.sun_path: a socket path must be
// shorter (one byte goes to the terminating NUL).
const sunPathMax = 108

// daemon is a private dockerd + containerd pair owned by this process.
//
// dockerd may be stopped and started again (RestartDaemon, KillDaemon,
// StartDaemon) while containerd keeps running: dockerd is then replaced by
// a new proc with the same binary and arguments. A daemon is not safe for
// concurrent use.
type daemon struct {
	dir         string
	socket      string
	cli         string
	dockerdBin  string
	dockerdArgs []string // identical for every start, so restarts see the same daemon
	containerd  *proc
	dockerd     *proc // the latest dockerd; exited while the test keeps it down
	logf        func(string, ...any)
}

// proc is a child process whose exit is observed by a dedicated goroutine.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed after Wait returned
	err  error         // Wait's result, valid after done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// terminate sends sig and waits up to grace for the exit, then kills.
func (p *proc) terminate(sig syscall.Signal, grace time.Duration) error {
	if p == nil || p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return fmt.Errorf("%s ignored %v for %v and was killed", p.name, sig, grace)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// spawn starts cmd in its own process group with a parent-death signal.
//
// The process group keeps a terminal's Ctrl-C away from the daemons: it
// reaches only the test binary, and teardown stays orderly. The death signal
// covers a test binary that dies without running its cleanups (panic,
// `go test -timeout`).
//
// Linux sends the death signal when the *thread* that forked the child
// exits, not the process. The Go runtime retires a thread when a goroutine
// locked to it exits, which netns tests do on purpose after setns. So the
// child is forked from a goroutine locked to its thread that lives as long
// as the child: no other goroutine can run on that thread, let alone retire
// it.
func spawn(cmd *exec.Cmd, name string, deathSig syscall.Signal) (*proc, error) {
	cmd.SysProcAttr = procAttr(deathSig)
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread is discarded when this goroutine
		// ends, by which time the child has exited.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return p, nil
}

// startDaemon starts containerd and dockerd under a new /tmp/np-dockerd-*
// directory and waits until dockerd answers /_ping. On error nothing is
// left behind.
func startDaemon(ctx context.Context, opts PrivateOptions, logf func(string, ...any)) (_ *daemon, err error) {
	sweepStale(logf)
	cli, err := lookBin("docker")
	if err != nil {
		return nil, errors.New("docker CLI not installed: apt-get install docker.io")
	}
	dockerdBin, err := lookBin("dockerd")
	if err != nil {
		return nil, errors.New("dockerd not installed: apt-get install docker.io")
	}
	containerdBin, err := lookBin("containerd")
	if err != nil {
		return nil, errors.New("containerd not installed: apt-get install containerd")
	}

	// Not t.TempDir(): its path embeds the test name and would push the
	// sockets inside past the 108-byte sun_path limit. /tmp, not $TMPDIR,
	// for the same reason.
	dir, err := os.MkdirTemp("/tmp", dirPrefix)
	if err != nil {
		return nil, err
	}
	d := &daemon{dir: dir, socket: filepath.Join(dir, "docker.sock"), cli: cli, dockerdBin: dockerdBin, logf: logf}
	defer func() {
		if err != nil {
			tail := d.logTail(15)
			if stopErr := d.stop(); stopErr != nil {
				err = errors.Join(err, stopErr)
			}
			if tail != "" {
				err = fmt.Errorf("%w\nlog tail:\n%s", err, tail)
			}
		}
	}()

	ctrdSock := filepath.Join(dir, "containerd", "containerd.sock")
	// containerd also listens on <sock>.ttrpc, the longest path here.
	if n := len(ctrdSock + ".ttrpc"); n >= sunPathMax {
		return nil, fmt.Errorf("socket path %s.ttrpc is %d bytes, limit %d", ctrdSock, n, sunPathMax-1)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(ownerStamp(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "containerd"), 0o711); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "containerd", "config.toml"), []byte(containerdConfig(dir)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte(daemonConfig(ctx, dockerdBin, dir)), 0o644); err != nil {
		return nil, err
	}

	// containerd is started here rather than left to dockerd: dockerd only
	// runs its own when /run/containerd/containerd.sock does not exist, and
	// otherwise silently shares that system containerd (namespace "moby")
	// with any other dockerd doing the same. A managed containerd would
	// also create /opt/containerd.
	//
	// No death signal for containerd: on a crash dockerd gets SIGTERM and
	// needs containerd to stop its containers. What stays behind then is
	// an idle containerd, which the next sweepStale removes.
	ctrdLog, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	defer ctrdLog.Close()
	cmd := exec.Command(containerdBin, "--config", filepath.Join(dir, "containerd", "config.toml"))
	cmd.Env, cmd.Stdout, cmd.Stderr = cleanEnv(), ctrdLog, ctrdLog
	if d.containerd, err = spawn(cmd, "containerd", 0); err != nil {
		return nil, err
	}
	_ = os.WriteFile(filepath.Join(dir, "containerd.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	if err := waitFor(ctx, 30*time.Second, d.containerd, func() bool {
		c, err := net.Dial("unix", ctrdSock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		return nil, fmt.Errorf("containerd socket %s: %w", ctrdSock, err)
	}

	d.dockerdArgs = []string{
		"--config-file", filepath.Join(dir, "daemon.json"),
		"--containerd", ctrdSock,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"-H", "unix://" + d.socket,
		// No docker0, no NAT: nothing a test does may reach eth0.
		"--iptables=false", "--ip-masq=false", "--bridge=none",
		"--userland-proxy=false",
		// Relative, so containers nest under the test's own cgroup
		// (memory accounting stays with the test) and every daemon has
		// its own subtree, removed at teardown.
		"--cgroup-parent", filepath.Base(dir),
	}
	if opts.LiveRestore {
		// A flag rather than a daemon.json key: daemon.json keeps the
		// layout scripts/dockerd-up.sh shares, and `ps` shows the mode.
		// dockerd refuses a setting given both ways, so it is only here.
		d.dockerdArgs = append(d.dockerdArgs, "--live-restore")
	}
	if err := d.startDockerd(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	return d, nil
}

// startDockerd starts dockerd (again) on the daemon's running containerd
// and waits up to limit until it answers /_ping. The previous dockerd, if
// any, must have exited. On error the new dockerd is killed, so the daemon
// is left with dockerd down and containerd up, which stop handles.
func (d *daemon) startDockerd(ctx context.Context, limit time.Duration) error {
	if d.dockerd != nil && !d.dockerd.exited() {
		return fmt.Errorf("dockerd (pid %d) is still running", d.dockerd.cmd.Process.Pid)
	}
	if d.containerd == nil || d.containerd.exited() {
		// dockerd would only retry its socket and give up; the harness
		// never restarts containerd, since keeping it is the point.
		return errors.New("containerd is not running")
	}
	// A dockerd killed with SIGKILL leaves its pidfile, and dockerd
	// refuses to start while the PID in it names a live process, which
	// after PID reuse can be any process. The previous dockerd has exited,
	// so the file is stale.
	if err := os.Remove(filepath.Join(d.dir, "docker.pid")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// Appended, so the log tail of a failed test shows every run.
	logFile, err := os.OpenFile(filepath.Join(d.dir, "dockerd.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "=== testenv: starting dockerd %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(d.dockerdBin, d.dockerdArgs...)
	cmd.Env, cmd.Stdout, cmd.Stderr = cleanEnv(), logFile, logFile
	p, err := spawn(cmd, "dockerd", syscall.SIGTERM)
	if err != nil {
		return err
	}
	d.dockerd = p
	if err := pingUntil(ctx, d.socket, limit, p); err != nil {
		_ = p.terminate(syscall.SIGKILL, 10*time.Second)
		return fmt.Errorf("dockerd on %s: %w", d.socket, err)
	}
	return nil
}

// containerdConfig keeps every containerd path under dir.
func containerdConfig(dir string) string {
	c := filepath.Join(dir, "containerd")
	return fmt.Sprintf(`version = 2
root = %q
state = %q
# CRI would set up CNI and listen for kubelet; dockerd needs none of it.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  # default /opt/containerd
  path = %q
`, filepath.Join(c, "root"), filepath.Join(c, "state"), filepath.Join(c, "containerd.sock"), filepath.Join(c, "opt"))
}

// daemonConfig is dockerd's --config-file. Passing one keeps a host
// /etc/docker/daemon.json (which could set "hosts" or a bridge) out of the
// test daemon. dockerd 20.10-22.x writes a trust key to /etc/docker/key.json
// unless "deprecated-key-path" (a config key, not a flag) says otherwise;
// later versions reject that key, so it is set only for them.
func daemonConfig(ctx context.Context, dockerdBin, dir string) string {
	out, err := exec.CommandContext(ctx, dockerdBin, "--version").Output()
	if err == nil {
		if m := regexp.MustCompile(`version (\d+)\.`).FindSubmatch(out); m != nil {
			if major, _ := strconv.Atoi(string(m[1])); major > 0 && major < 23 {
				return fmt.Sprintf("{\n  \"deprecated-key-path\": %q\n}\n", filepath.Join(dir, "key.json"))
			}
		}
	}
	return "{}\n"
}

// waitFor polls ready until it holds, the child exits, or limit passes.
func waitFor(ctx context.Context, limit time.Duration, p *proc, ready func() bool) error {
	deadline := time.Now().Add(limit)
	for {
		if ready() {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// pingUntil waits until the dockerd on sock answers GET /_ping with 200.
// dockerd listens before it is ready and answers early requests with
// errors, so a successful dial is not enough.
func pingUntil(ctx context.Context, sock string, limit time.Duration, p *proc) error {
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}},
	}
	defer client.CloseIdleConnections()
	var last error
	err := waitFor(ctx, limit, p, func() bool {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
		resp, err := client.Do(req)
		if err != nil {
			last = err
			return false
		}
		resp.Body.Close()
		last = fmt.Errorf("/_ping: HTTP %d", resp.StatusCode)
		return resp.StatusCode == http.StatusOK
	})
	if err != nil && last != nil {
		err = fmt.Errorf("%w (last: %v)", err, last)
	}
	return err
}

// stop removes all containers, stops dockerd and containerd, and removes
// every trace: leftover processes, mounts, cgroups and the directory. If
// the test left dockerd down (KillDaemon), its containers, still running
// under containerd, go with the leftover processes.
func (d *daemon) stop() error {
	var errs []error
	if d.dockerdRunning() {
		// Containers go first, with force: dockerd's own shutdown would
		// stop each with its stop timeout, and `sleep` as PID 1 ignores
		// SIGTERM, so that is 10 s per container.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		ids, err := runDockerCLI(ctx, d.cli, d.socket, nil, "ps", "-aq", "--no-trunc")
		if err == nil && ids != "" {
			_, err = runDockerCLI(ctx, d.cli, d.socket, nil, append([]string{"rm", "-f", "-v"}, strings.Fields(ids)...)...)
		}
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("removing containers: %w", err))
		}
		errs = append(errs, d.dockerd.terminate(syscall.SIGTERM, 30*time.Second))
	}
	errs = append(errs, d.containerd.terminate(syscall.SIGTERM, 15*time.Second))
	errs = append(errs, forceCleanup(d.dir))
	return errors.Join(errs...)
}

// logTail returns the last n lines of dockerd's (or, if dockerd never
// started, containerd's) log, for failure messages.
func (d *daemon) logTail(n int) string {
	for _, name := range []string{"dockerd.log", "containerd.log"} {
		b, err := os.ReadFile(filepath.Join(d.dir, name))
		if err != nil || len(b) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		return strings.Join(lines, "\n")
	}
	return ""
}

// forceCleanup removes everything a daemon in dir can leave behind, whether
// or not it was stopped cleanly: processes in its cgroups (container
// processes survive their shim), containerd shims and any other process
// whose command line names dir, mounts under dir (overlay rootfs, netns
// bind mounts, the data-root bind mount), the cgroup directories, and dir
// itself. It reports what could not be removed.
func forceCleanup(dir string) error {
	if dir == "" || !strings.HasPrefix(filepath.Base(dir), dirPrefix) {
		return fmt.Errorf("refusing to clean %q", dir)
	}
	cgroupName := filepath.Base(dir)
	cgroups := findCgroups(cgroupName)
	shimSocks := shimSockets(dir) // before the state they are derived from goes

	// Kill, then wait for the processes to be gone: a mount held by a
	// dying process cannot be unmounted yet.
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := cgroupPids(cgroups)
		pids = append(pids, pidsNaming(dir)...)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of %s still alive after SIGKILL: %v", dir, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}

	var errs []error
	for _, sock := range shimSocks {
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	// Children before parents: a cgroup with sub-cgroups cannot be removed.
	sort.Slice(cgroups, func(i, j int) bool { return len(cgroups[i]) > len(cgroups[j]) })
	for _, cg := range cgroups {
		if err := removeCgroupTree(cg); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// shimSockets lists the sockets containerd (1.6) shims of the containerd
// in dir use: /run/containerd/s/<sha256 of "<containerd address>/<namespace>/<id>">.
// That directory is fixed whatever containerd's config says, and a shim
// killed with SIGKILL leaves its socket there, so they are removed by name.
func shimSockets(dir string) []string {
	addr := filepath.Join(dir, "containerd", "containerd.sock")
	tasks := filepath.Join(dir, "containerd", "state", "io.containerd.runtime.v2.task")
	namespaces, _ := os.ReadDir(tasks)
	var socks []string
	for _, ns := range namespaces {
		ids, _ := os.ReadDir(filepath.Join(tasks, ns.Name()))
		for _, id := range ids {
			sum := sha256.Sum256([]byte(filepath.Join(addr, ns.Name(), id.Name())))
			socks = append(socks, "/run/containerd/s/"+hex.EncodeToString(sum[:]))
		}
	}
	return socks
}

// findCgroups returns every directory under /sys/fs/cgroup named name (one
// per v1 hierarchy, nested at the test's own position in each).
func findCgroups(name string) []string {
	var found []string
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			p := filepath.Join(dir, e.Name())
			if e.Name() == name {
				found = append(found, p)
				continue
			}
			// Container cgroups sit a few levels down at most; bound the
			// walk so a big host cgroup tree stays cheap.
			if depth < 5 {
				walk(p, depth+1)
			}
		}
	}
	walk("/sys/fs/cgroup", 0)
	return found
}

// cgroupPids lists the processes in the given cgroups and their children.
func cgroupPids(cgroups []string) []int {
	var pids []int
	for _, cg := range cgroups {
		_ = filepath.WalkDir(cg, func(p string, e os.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// pidsNaming lists Docker processes whose command line mentions dir: the
// daemons themselves, containerd shims (`-address <dir>/containerd/...`),
// runc and docker CLI calls. Other programs (an engineer's `tail -f` of a
// log in dir) are left alone.
func pidsNaming(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
		if c := string(comm); !strings.HasPrefix(c, "containerd") && !strings.HasPrefix(c, "docker") && !strings.HasPrefix(c, "runc") {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(cmdline) == 0 { // gone, or a zombie
			continue
		}
		for _, arg := range strings.Split(string(cmdline), "\x00") {
			if arg == dir || strings.HasPrefix(arg, dir+"/") || strings.Contains(arg, "="+dir+"/") ||
				strings.HasPrefix(arg, "unix://"+dir+"/") {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// unmountUnder unmounts every mount at or below dir, deepest first,
// repeating for stacked mounts; a mount still busy is detached.
func unmountUnder(dir string) error {
	for round := 0; round < 10; round++ {
		mps := mountsUnder(dir)
		if len(mps) == 0 {
			return nil
		}
		sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
		for _, mp := range mps {
			if err := unmount(mp, false); err != nil {
				_ = unmount(mp, true)
			}
		}
	}
	if mps := mountsUnder(dir); len(mps) > 0 {
		return fmt.Errorf("mounts left under %s: %v", dir, mps)
	}
	return nil
}

// mountsUnder reads /proc/self/mountinfo for mount points at or below dir.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20) // overlay lines list many layers
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	return mps
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCgroupTree removes a cgroup directory and its sub-cgroups. Cgroup
// directories are removed with rmdir even though they list files.
func removeCgroupTree(cg string) error {
	var dirs []string
	_ = filepath.WalkDir(cg, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var last error
	for i := len(dirs) - 1; i >= 0; i-- {
		// A just-killed task may take a moment to leave the cgroup.
		for try := 0; try < 40; try++ {
			last = syscall.Rmdir(dirs[i])
			if last == nil || errors.Is(last, os.ErrNotExist) {
				last = nil
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		if last != nil {
			return fmt.Errorf("removing cgroup %s: %w", dirs[i], last)
		}
	}
	return nil
}

// ownerStamp identifies a process across PID reuse: its PID and start time
// (field 22 of /proc/<pid>/stat, in clock ticks since boot).
func ownerStamp(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	// The command name (field 2) may contain spaces; fields after the
	// closing parenthesis are plain.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		f := strings.Fields(s[i+1:])
		if len(f) > 19 {
			return strconv.Itoa(pid) + " " + f[19]
		}
	}
	return ""
}

// sweepStale removes daemon directories whose owning test process has died
// without cleaning up (panic, timeout, SIGKILL). Directories without an
// owner file (scripts/dockerd-up.sh, or one being created right now) and
// directories of live processes are left alone.
func sweepStale(logf func(string, ...any)) {
	dirs, _ := filepath.Glob("/tmp/" + dirPrefix + "*")
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			continue
		}
		stamp := strings.TrimSpace(string(b))
		pidStr, _, _ := strings.Cut(stamp, " ")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || ownerStamp(pid) == stamp {
			continue // unparseable, or its owner is alive
		}
		if err := forceCleanup(dir); err != nil {
			logf("testenv: stale %s (owner pid %d gone): %v", dir, pid, err)
		} else {
			logf("testenv: removed stale %s (owner pid %d gone)", dir, pid)
		}
	}
}
