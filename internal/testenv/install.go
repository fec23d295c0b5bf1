package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
)

// tools maps each binary a private daemon needs to the Debian package that
// ships it.
var tools = []struct{ bin, pkg string }{
	{"dockerd", "docker.io"},
	{"docker", "docker.io"},
	{"containerd", "containerd"},              // docker.io depends on it
	{"containerd-shim-runc-v2", "containerd"}, // started by containerd
	{"runc", "runc"},                          // docker.io depends on it
	{"busybox", "busybox-static"},             // the test image's only binary
}

// ensurePrereqs makes sure a private daemon can be started, installing
// missing packages with apt-get when it can. It returns "" when all is
// there, else a one-line reason to skip.
func ensurePrereqs(ctx context.Context, logf func(string, ...any)) string {
	if runtime.GOOS != "linux" {
		return "a private dockerd needs Linux; set " + EnvDockerHost + " to a daemon's socket"
	}
	if os.Geteuid() != 0 {
		return fmt.Sprintf("private dockerd needs root (euid %d): run the tests as root or set %s to a running dockerd's socket",
			os.Geteuid(), EnvDockerHost)
	}
	missing := missingPackages()
	if len(missing) > 0 && os.Getenv(EnvNoInstall) == "" {
		if _, err := lookBin("apt-get"); err == nil {
			logf("installing %s (binaries missing)", strings.Join(missing, " "))
			if err := aptInstall(ctx, missing); err != nil {
				logf("apt-get failed: %v", err)
			}
			missing = missingPackages()
		}
	}
	if len(missing) > 0 {
		var bins []string
		for _, t := range tools {
			if _, err := lookBin(t.bin); err != nil {
				bins = append(bins, t.bin)
			}
		}
		return fmt.Sprintf("%s not installed: apt-get install %s", strings.Join(bins, ", "), strings.Join(missing, " "))
	}
	if _, reason := findStaticBusybox(); reason != "" {
		return reason
	}
	return ""
}

// missingPackages lists the packages whose binaries are not found.
func missingPackages() []string {
	set := map[string]bool{}
	for _, t := range tools {
		if _, err := lookBin(t.bin); err != nil {
			set[t.pkg] = true
		}
	}
	pkgs := make([]string, 0, len(set))
	for p := range set {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	return pkgs
}

const policyRCD = "/usr/sbin/policy-rc.d"

// aptInstall installs pkgs. docker.io's postinst starts the system dockerd
// unless policy-rc.d forbids it, and that daemon would create docker0 and
// NAT rules towards eth0, which tests must never do. So when no policy
// exists, a deny-all one is put in place for the duration of the install.
func aptInstall(ctx context.Context, pkgs []string) error {
	if _, err := os.Lstat(policyRCD); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policyRCD, []byte("#!/bin/sh\n# netplugin testenv: no service starts during install\nexit 101\n"), 0o755); err != nil {
			return fmt.Errorf("writing %s: %w", policyRCD, err)
		}
		defer os.Remove(policyRCD)
	}
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(cleanEnv(), "DEBIAN_FRONTEND=noninteractive")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			return fmt.Errorf("apt-get %s: %w: %s", strings.Join(args, " "), err, lines[len(lines)-1])
		}
		return nil
	}
	// Another apt run (a parallel test package) may hold the lock.
	lock := "-oDPkg::Lock::Timeout=300"
	if err := run(lock, "update"); err != nil {
		return err
	}
	return run(append([]string{lock, "install", "-y"}, pkgs...)...)
}
