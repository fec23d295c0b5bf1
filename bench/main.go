// Command bench measures netplugin against what the kernel itself costs, in the
// same run on the same machine, prints a table and writes bench/results.json.
// Run it with `make bench` (as root).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/sirupsen/logrus"
)

// Result is one figure.
type Result struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Target string  `json:"target,omitempty"`
	Pass   *bool   `json:"pass,omitempty"`
	Note   string  `json:"note,omitempty"`
}

type report struct {
	Date    string   `json:"date"`
	Host    string   `json:"host"`
	Results []Result `json:"results"`
}

func main() {
	n := flag.Int("n", 500, "endpoints per benchmark")
	np := flag.String("netplugin", "bin/netplugin", "netplugin binary")
	out := flag.String("out", "bench/results.json", "results file")
	only := flag.String("only", "", "comma-separated benchmark groups to run (alloc, scale, linuxbridge, macvlan, ovs, docker, xhost, fleet, policy, policyapply, policyagents); empty: all")
	allocN := flag.Int("alloc-n", 10000, "alloc: endpoints created one by one (and a tenth of it per concurrent creator)")
	sizes := flag.String("scale-sizes", "100,300,1000", "scale: numbers of agents to run, one run each")
	flag.Parse()
	log := logrus.NewEntry(logrus.New())
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root (creates namespaces and links)")
		os.Exit(1)
	}
	ctx := context.Background()
	b := &bench{n: *n, allocN: *allocN, netplugin: *np, log: log, prefix: fmt.Sprintf("npb%d", os.Getpid()%100000)}
	for _, f := range strings.Split(*sizes, ",") {
		var v int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &v); err != nil || v < 5 {
			fmt.Fprintf(os.Stderr, "bench: -scale-sizes %q: want numbers of agents of at least 5\n", *sizes)
			os.Exit(1)
		}
		b.scaleSizes = append(b.scaleSizes, v)
	}
	dataDir, err := os.MkdirTemp("", "npb-data")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	b.dataDir = dataDir
	groups := map[string]func(context.Context) ([]Result, error){
		"alloc":        b.alloc,
		"scale":        b.scale,
		"linuxbridge":  b.linuxbridge,
		"docker":       b.dockerRun,
		"macvlan":      b.macvlan,
		"ovs":          b.ovs,
		"xhost":        b.xhost,
		"fleet":        b.fleet,
		"policy":       b.policy,
		"policyapply":  b.policyApply,
		"policyagents": b.policyAgents,
	}
	var names []string
	for g := range groups {
		if *only == "" || strings.Contains(","+*only+",", ","+g+",") {
			names = append(names, g)
		}
	}
	sort.Strings(names)
	var results []Result
	failed := false
	for _, g := range names {
		rs, err := groups[g](ctx)
		results = append(results, rs...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench %s: %v\n", g, err)
			failed = true
		}
	}
	os.RemoveAll(dataDir)
	host, _ := os.Hostname()
	rep := report{Date: time.Now().UTC().Format(time.RFC3339), Host: host, Results: results}
	printTable(rep)
	data, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Println("wrote", *out)
	if failed {
		os.Exit(1)
	}
}

func printTable(r report) {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "BENCHMARK\tVALUE\tUNIT\tTARGET\tPASS\tNOTE")
	for _, x := range r.Results {
		pass := "-"
		if x.Pass != nil {
			pass = fmt.Sprint(*x.Pass)
		}
		fmt.Fprintf(w, "%s\t%.3f\t%s\t%s\t%s\t%s\n", x.Name, x.Value, x.Unit, x.Target, pass, x.Note)
	}
	w.Flush()
}

func boolp(b bool) *bool { return &b }

type bench struct {
	n          int
	allocN     int
	scaleSizes []int
	netplugin  string
	log        *logrus.Entry
	prefix     string
	// dataDir holds each agent's --data-dir: an agent records there which
	// etcd cluster programmed its host, and every group brings its own etcd,
	// so sharing the default /var/lib/netplugin would make the second group's
	// agent refuse its store.
	dataDir string
}

// makeNamespaces creates count named namespaces in parallel and returns their names.
func makeNamespaces(prefix string, count int) ([]string, error) {
	names := make([]string, count)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return names, forEach(names, 8, func(n string) error {
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add %s: %v: %s", n, err, out)
		}
		return nil
	})
}

func deleteNamespaces(names []string) {
	_ = forEach(names, 8, func(n string) error { return exec.Command("ip", "netns", "del", n).Run() })
}

func forEach[T any](items []T, workers int, f func(T) error) error {
	ch := make(chan T)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range ch {
				if err := f(it); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
	return first
}

// peakRSS reads VmHWM (peak resident set) of a process, in MiB.
func peakRSS(pid int) float64 {
	data, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			var kb float64
			fmt.Sscan(f[1], &kb)
			return kb / 1024
		}
	}
	return 0
}
