// Command netplugin is the per-host agent: it makes this host's dataplane match
// the desired state in etcd. With no --etcd-endpoints it runs an embedded etcd,
// so a single host needs nothing else.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
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
	"github.com/netplugin/netplugin/mgmtfn"
	"github.com/netplugin/netplugin/netplugin/agent"
	"github.com/netplugin/netplugin/state"
)

func main() {
	host, _ := os.Hostname()
	app := &cli.App{
		Name:  "netplugin",
		Usage: "per-host agent of the netplugin container network control plane",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "etcd-endpoints", Usage: "etcd cluster to use; none: run an embedded etcd"},
			&cli.StringFlag{Name: "data-dir", Value: "/var/lib/netplugin", Usage: "embedded etcd data"},
			&cli.StringFlag{Name: "etcd-client-url", Value: "http://127.0.0.1:2379", Usage: "embedded etcd client URL"},
			&cli.StringFlag{Name: "etcd-peer-url", Value: "http://127.0.0.1:2380", Usage: "embedded etcd peer URL"},
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

	endpoints := c.StringSlice("etcd-endpoints")
	if len(endpoints) == 0 {
		dir := filepath.Join(c.String("data-dir"), "etcd")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		zl, err := zap.NewProduction(zap.IncreaseLevel(zap.ErrorLevel))
		if err != nil {
			return fmt.Errorf("etcd logger: %w", err)
		}
		e, err := state.StartEmbedded(ctx, state.EmbeddedConfig{DataDir: dir, Logger: zl,
			ClientURL: c.String("etcd-client-url"), PeerURL: c.String("etcd-peer-url")})
		if err != nil {
			return err
		}
		defer e.Close()
		endpoints = []string{e.Endpoint()}
		log.WithField("url", e.Endpoint()).Info("embedded etcd started")
	}
	store, err := connect(ctx, endpoints, log)
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
			drivers[name] = ipvlan.New(log, ipvlan.Config{Host: c.String("host-label")})
		case macvlan.Name:
			d, err := macvlan.New(log, macvlan.Config{StateDir: stateDir(macvlan.Name, c.String("host-label"))})
			if err != nil {
				return err
			}
			defer d.Close()
			drivers[name] = d
		case hostnic.Name:
			d, err := hostnic.New(log, hostnic.Config{StateDir: stateDir(hostnic.Name, c.String("host-label")), Host: c.String("host-label")})
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
func stateDir(driver, host string) string {
	return filepath.Join("/run/netplugin", driver, strings.ReplaceAll(host, "/", "_"))
}

// connect retries: an agent started before etcd must wait for it, not exit.
func connect(ctx context.Context, endpoints []string, log *logrus.Entry) (*state.Store, error) {
	for {
		s, err := state.Connect(ctx, endpoints, 5*time.Second, log)
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
			http.Error(w, "no successful sync recently", http.StatusServiceUnavailable)
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
