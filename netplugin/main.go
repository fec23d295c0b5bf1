// Command netplugin is the per-host agent: it makes this host's dataplane match
// the desired state in etcd. With no --etcd-endpoints it runs an embedded etcd,
// so a single host needs nothing else.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/hostnic"
	"github.com/netplugin/netplugin/drivers/ipvlan"
	"github.com/netplugin/netplugin/drivers/linuxbridge"
	"github.com/netplugin/netplugin/drivers/macvlan"
	"github.com/netplugin/netplugin/drivers/ovs"
	"github.com/netplugin/netplugin/internal/docker"
	"github.com/netplugin/netplugin/internal/pki"
	"github.com/netplugin/netplugin/mgmtfn"
	"github.com/netplugin/netplugin/netplugin/agent"
	"github.com/netplugin/netplugin/state"
	"github.com/netplugin/netplugin/state/etcdserver"
)

func main() {
	host, _ := os.Hostname()
	app := &cli.App{
		Name:  "netplugin",
		Usage: "per-host agent of the netplugin container network control plane",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "etcd-endpoints", Usage: "etcd cluster to use (every member); none: run an embedded etcd"},
			&cli.StringFlag{Name: "etcd-cacert", Usage: "CA of the etcd cluster's certificates"},
			&cli.StringFlag{Name: "etcd-cert", Usage: "this host's etcd client certificate"},
			&cli.StringFlag{Name: "etcd-key", Usage: "key of --etcd-cert"},
			&cli.StringFlag{Name: "data-dir", Value: "/var/lib/netplugin", Usage: "embedded etcd data and its certificates (pki/)"},
			&cli.StringFlag{Name: "etcd-client-url", Value: "https://127.0.0.1:2379", Usage: "embedded etcd client URL (TLS only)"},
			&cli.StringFlag{Name: "etcd-peer-url", Value: "https://127.0.0.1:2380", Usage: "embedded etcd peer URL (TLS only)"},
			&cli.StringFlag{Name: "run-dir", Value: state.DefaultRunDir, EnvVars: []string{"NETPLUGIN_RUN_DIR"}, Usage: "driver records and the local etcd's certificate map (root only)"},
			&cli.StringFlag{Name: "host-label", Value: host, Usage: "this host's name in endpoint specs"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:9090", Usage: "health and Prometheus metrics address; empty: off"},
			&cli.StringFlag{Name: "docker-socket", Value: "/var/run/docker.sock", Usage: "Docker Engine API socket, to find containers' namespaces"},
			&cli.StringFlag{Name: "docker-plugin", Value: "netplugin", Usage: "name of the Docker network and IPAM driver served (-d NAME --ipam-driver NAME); empty: none"},
			&cli.StringFlag{Name: "docker-plugin-dir", Value: mgmtfn.DefaultSocketDir, Usage: "where Docker looks for plugin sockets"},
			&cli.StringSliceFlag{Name: "drivers", Value: cli.NewStringSlice(linuxbridge.Name, macvlan.Name, ipvlan.Name, hostnic.Name), Usage: "drivers to enable (ovs needs ovs-vswitchd)"},
			&cli.StringFlag{Name: "ovsdb", Value: ovs.DefaultOVSDB, Usage: "OVS driver: ovsdb-server address (unix:PATH or tcp:HOST:PORT)"},
			&cli.StringFlag{Name: "ovs-bridge", Value: ovs.DefaultBridge, Usage: "OVS driver: integration bridge"},
			&cli.StringFlag{Name: "ovs-datapath", Value: ovs.DefaultDatapathType, Usage: "OVS driver: datapath type of new bridges (system, or netdev without the kernel module)"},
			&cli.StringFlag{Name: "ovs-uplink", Usage: "OVS driver: interface added as a trunk port carrying the VLAN networks (never taken implicitly)"},
			&cli.StringFlag{Name: "ovs-netns", Usage: "OVS driver: namespace ovs-vswitchd runs in, if not the agent's (tests run several)"},
			&cli.StringFlag{Name: "vtep-ip", Usage: "this host's underlay address, published to the other hosts (VXLAN tunnels, routes to routed networks)"},
			&cli.IntFlag{Name: "mtu", Usage: "MTU of container interfaces on VXLAN networks; 0: the MTU of the interface holding --vtep-ip minus 50"},
			&cli.StringFlag{Name: "uplink", Usage: "linuxbridge driver: interface whose 802.1Q subinterfaces carry the VLAN networks to other hosts (never taken implicitly)"},
			&cli.DurationFlag{Name: "host-grace", Value: 30 * time.Second, Usage: "how long a host whose lease expired keeps its tunnels, routes and forwarding entries here"},
			&cli.DurationFlag{Name: "resync", Value: 10 * time.Second, Usage: "full resync period"},
			&cli.IntFlag{Name: "lease-ttl", Value: 10, Usage: "seconds this host stays registered (and its status visible) after its agent stops renewing"},
			&cli.BoolFlag{Name: "adopt-cluster", Usage: "take the store's cluster ID although this host was programmed from another etcd cluster"},
			&cli.IntFlag{Name: "workers", Value: 4, Usage: "endpoints programmed in parallel"},
			&cli.BoolFlag{Name: "debug", Aliases: []string{"d"}, Usage: "debug logging"},
		},
		Action: run,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "netplugin:", err)
		os.Exit(1)
	}
}

func run(c *cli.Context) error {
	logger := logrus.New()
	if c.Bool("debug") {
		logger.SetLevel(logrus.DebugLevel)
	}
	log := logrus.NewEntry(logger)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The label is part of etcd keys, link marks and state paths.
	if err := core.ValidName("host label", c.String("host-label")); err != nil {
		return fmt.Errorf("--host-label: %w", err)
	}

	// One agent per host label per machine: a second one would fight the
	// first over the same links. The lock goes with the process.
	unlock, err := lockHost(c.String("run-dir"), c.String("host-label"))
	if err != nil {
		return err
	}
	defer unlock()

	endpoints := c.StringSlice("etcd-endpoints")
	tlsFiles := state.TLSFiles{CA: c.String("etcd-cacert"), Cert: c.String("etcd-cert"), Key: c.String("etcd-key")}
	if len(endpoints) == 0 {
		e, files, unpublish, err := startEmbedded(ctx, c, log)
		if err != nil {
			return err
		}
		defer e.Close()
		defer unpublish()
		endpoints, tlsFiles = []string{e.Endpoint()}, files
	} else {
		endpoints, tlsFiles = state.ResolveTLS(c.String("run-dir"), endpoints, tlsFiles)
	}
	store, err := connect(ctx, endpoints, tlsFiles, log)
	if err != nil {
		return err
	}
	defer store.Close()

	drivers := map[string]core.Driver{}
	for _, name := range c.StringSlice("drivers") {
		switch name {
		case linuxbridge.Name:
			d, err := linuxbridge.New(log, linuxbridge.Config{Host: c.String("host-label"), VTEP: c.String("vtep-ip"),
				MTU: c.Int("mtu"), Uplink: c.String("uplink")})
			if err != nil {
				return err
			}
			drivers[name] = d
		case ipvlan.Name:
			drivers[name] = ipvlan.New(log, ipvlan.Config{Host: c.String("host-label"), StateDir: stateDir(c.String("run-dir"), ipvlan.Name, c.String("host-label"))})
		case macvlan.Name:
			d, err := macvlan.New(log, macvlan.Config{StateDir: stateDir(c.String("run-dir"), macvlan.Name, c.String("host-label"))})
			if err != nil {
				return err
			}
			defer d.Close()
			drivers[name] = d
		case hostnic.Name:
			d, err := hostnic.New(log, hostnic.Config{StateDir: stateDir(c.String("run-dir"), hostnic.Name, c.String("host-label")), Host: c.String("host-label")})
			if err != nil {
				return err
			}
			defer d.Close()
			drivers[name] = d
		case ovs.Name:
			d, err := ovs.New(ctx, ovs.Config{Host: c.String("host-label"), OVSDB: c.String("ovsdb"), Bridge: c.String("ovs-bridge"),
				DatapathType: c.String("ovs-datapath"), Uplink: c.String("ovs-uplink"), VTEP: c.String("vtep-ip"),
				MTU: c.Int("mtu"), HostNetNS: c.String("ovs-netns")}, log)
			if err != nil {
				return err
			}
			defer d.Close()
			drivers[name] = d
		default:
			return fmt.Errorf("unknown driver %q (have: %s, %s, %s, %s, %s)", name, linuxbridge.Name, ovs.Name, ipvlan.Name, macvlan.Name, hostnic.Name)
		}
	}
	metrics := agent.NewMetrics()
	dk := docker.New(c.String("docker-socket"))
	a := agent.New(agent.Config{
		Host: c.String("host-label"), VTEP: c.String("vtep-ip"), Store: store, Drivers: drivers,
		Containers: dk,
		Resync:     c.Duration("resync"), Workers: c.Int("workers"), HostGrace: c.Duration("host-grace"), Log: log, Metrics: metrics,
		LeaseTTL: c.Int("lease-ttl"), AdoptCluster: c.Bool("adopt-cluster"),
		LeaseFile:   filepath.Join(c.String("run-dir"), "agent", c.String("host-label")+".lease"),
		ClusterFile: filepath.Join(c.String("data-dir"), "cluster-id"),
	})
	if addr := c.String("listen"); addr != "" {
		srv := &http.Server{Addr: addr, Handler: handler(a, metrics), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.WithError(err).Error("metrics listener failed")
			}
		}()
		defer srv.Close()
	}
	go pokeOnContainerEvents(ctx, dk, a, log)
	if name := c.String("docker-plugin"); name != "" {
		p := mgmtfn.New(mgmtfn.Config{Name: name, SocketDir: c.String("docker-plugin-dir"), Host: c.String("host-label"),
			Store: store, Drivers: drivers, Agent: a, Docker: dk, GCPeriod: c.Duration("resync"), Log: log})
		go func() {
			if err := p.Serve(ctx); err != nil {
				log.WithError(err).Error("Docker plugin stopped")
			}
		}()
	}
	log.WithFields(logrus.Fields{"host": c.String("host-label"), "etcd": strings.Join(endpoints, ",")}).Info("agent running")
	return a.Run(ctx)
}

// stateDir is where a driver records what it programmed inside containers. It
// is on /run: it must survive an agent crash, and like the namespaces it
// describes it does not survive a reboot. Per host label, so that agents sharing
// a kernel keep apart.
func stateDir(runDir, driver, host string) string {
	return filepath.Join(runDir, driver, host)
}

// startEmbedded runs the single-host etcd, closed to everyone without the
// client certificate it makes on first start under --data-dir/pki (root only),
// and publishes under --run-dir which certificates open it, so that root's
// netdcli on this host needs no flags.
func startEmbedded(ctx context.Context, c *cli.Context, log *logrus.Entry) (*etcdserver.Server, state.TLSFiles, func(), error) {
	var none state.TLSFiles
	cu, err := url.Parse(c.String("etcd-client-url"))
	if err != nil {
		return nil, none, nil, fmt.Errorf("--etcd-client-url: %w", err)
	}
	if cu.Scheme != "https" {
		return nil, none, nil, fmt.Errorf("--etcd-client-url %s: the embedded etcd serves TLS only (client certificates required): use https://", cu)
	}
	pu, err := url.Parse(c.String("etcd-peer-url"))
	if err != nil {
		return nil, none, nil, fmt.Errorf("--etcd-peer-url: %w", err)
	}
	pk, err := pki.EnsureLocal(filepath.Join(c.String("data-dir"), "pki"), []string{cu.Hostname(), pu.Hostname()}, "root")
	if err != nil {
		return nil, none, nil, err
	}
	dir := filepath.Join(c.String("data-dir"), "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, none, nil, fmt.Errorf("data dir: %w", err)
	}
	zl, err := zap.NewProduction(zap.IncreaseLevel(zap.ErrorLevel))
	if err != nil {
		return nil, none, nil, fmt.Errorf("etcd logger: %w", err)
	}
	e, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: dir, Logger: zl,
		ClientURL: cu.String(), PeerURL: pu.String(),
		TLS: &etcdserver.ServerTLS{CA: pk.CA, Cert: pk.ServerCert, Key: pk.Server}})
	if err != nil {
		return nil, none, nil, err
	}
	files := state.TLSFiles{CA: pk.CA, Cert: pk.ClientCert, Key: pk.Client}
	unpublish, err := state.PublishLocal(c.String("run-dir"), state.LocalEtcd{Endpoint: e.Endpoint(), TLSFiles: files, PID: os.Getpid()})
	if err != nil {
		e.Close()
		return nil, none, nil, err
	}
	log.WithField("url", e.Endpoint()).Info("embedded etcd started (client certificates required)")
	return e, files, unpublish, nil
}

// lockHost takes an exclusive lock for host under runDir, held until the
// process exits or unlock is called.
func lockHost(runDir, host string) (func(), error) {
	dir := filepath.Join(runDir, "agent")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	path := filepath.Join(dir, host+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("another netplugin with host label %q runs on this machine (pid %s, lock %s): stop it or give this one another --host-label",
			host, strings.TrimSpace(string(pid)), path)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	return func() { f.Close() }, nil
}

// connect retries: an agent started before etcd must wait for it, not exit.
func connect(ctx context.Context, endpoints []string, files state.TLSFiles, log *logrus.Entry) (*state.Store, error) {
	for {
		s, err := state.Connect(ctx, endpoints, 5*time.Second, log, state.WithTLS(files))
		if errors.Is(err, core.ErrInvalid) {
			return nil, err // bad TLS files do not get better by waiting
		}
		if err == nil {
			return s, nil
		}
		log.WithError(err).Warn("etcd not reachable yet; retrying")
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

func handler(a *agent.Agent, m *agent.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.Healthy() {
			why := a.Problem()
			if why == "" {
				why = "no successful sync recently"
			}
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// pokeOnContainerEvents makes the agent sync as soon as a container starts or
// dies (a restarted container has a new namespace to plug into) instead of at
// the next resync. Without Docker it keeps retrying quietly: the resync still
// covers everything.
func pokeOnContainerEvents(ctx context.Context, dk *docker.Client, a *agent.Agent, log *logrus.Entry) {
	backoff := time.Second
	for ctx.Err() == nil {
		stream, err := dk.Events(ctx, docker.EventFilter{Actions: []string{docker.ActionStart, docker.ActionDie}})
		if err == nil {
			backoff = time.Second
			a.Poke() // events may have been missed while not subscribed
			for range stream.C {
				a.Poke()
			}
			err = stream.Err()
		}
		if ctx.Err() != nil {
			return
		}
		log.WithError(err).Debug("docker events unavailable; relying on resync")
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}
