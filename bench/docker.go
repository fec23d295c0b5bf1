package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"
)

// dockerRun compares `docker run --rm <image> true` on a netplugin network with
// the same on a Docker built-in bridge network of the same dockerd, alternating
// the two so that machine noise hits both alike.
func (b *bench) dockerRun(ctx context.Context) ([]Result, error) {
	dir, err := os.MkdirTemp("", "npbd")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if out, err := exec.Command("scripts/dockerd-up.sh", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dockerd-up: %v: %s", err, out)
	}
	defer exec.Command("scripts/dockerd-down.sh", dir).Run()
	sock := dir + "/docker.sock"
	dk := func(args ...string) (string, error) {
		out, err := exec.Command("/usr/bin/docker", append([]string{"-H", "unix://" + sock}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	env, err := b.startEtcd(ctx)
	if err != nil {
		return nil, err
	}
	defer env.close()
	plugin := b.prefix + "d"
	defer cleanStateDirs(b.prefix + "-dhost")
	a, err := b.startAgent(env.url, env.listen, b.prefix+"-dhost", "--docker-socket", sock, "--docker-plugin", plugin)
	if err != nil {
		return nil, err
	}
	defer a.stop()
	nets := map[string][]string{
		"netplugin": {"network", "create", "-d", plugin, "--ipam-driver", plugin, "--subnet", "10.92.0.0/24", b.prefix + "-np"},
		"bridge":    {"network", "create", "-d", "bridge", "--internal", "--subnet", "10.92.1.0/24", b.prefix + "-br"},
	}
	for _, args := range nets {
		if out, err := dk(args...); err != nil {
			return nil, fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	defer dk("network", "rm", b.prefix+"-np", b.prefix+"-br")
	const runs = 15
	times := map[string][]time.Duration{}
	for i := 0; i < runs+2; i++ { // the first two of each warm caches and are dropped
		for _, kind := range []string{"netplugin", "bridge"} {
			netName := b.prefix + "-np"
			if kind == "bridge" {
				netName = b.prefix + "-br"
			}
			start := time.Now()
			if out, err := dk("run", "--rm", "--network", netName, "netplugin-test/busybox", "true"); err != nil {
				return nil, fmt.Errorf("docker run on %s: %v: %s: %s", kind, err, out, trimLog(a.log.String()))
			}
			if i >= 2 {
				times[kind] = append(times[kind], time.Since(start))
			}
		}
	}
	np, br := median(times["netplugin"]), median(times["bridge"])
	ratio := np.Seconds() / br.Seconds()
	leftover, _ := dk("ps", "-aq")
	note := fmt.Sprintf("median of %d alternated runs", runs)
	if leftover != "" {
		note += "; containers left: " + leftover
	}
	return []Result{
		{Name: "docker_run_bridge", Value: br.Seconds() * 1000, Unit: "ms", Note: note},
		{Name: "docker_run_netplugin", Value: np.Seconds() * 1000, Unit: "ms", Target: "<= 1.15 x docker_run_bridge",
			Pass: boolp(ratio <= 1.15), Note: fmt.Sprintf("ratio %.2f", ratio)},
	}, nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
