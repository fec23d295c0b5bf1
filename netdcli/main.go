// Command netdcli writes and reads netplugin's desired state: tenants, networks,
// endpoints and their attachment to containers, in the grammar of the original
// netdcli (`netdcli -oper create -construct network ... NAME`).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/docker"
	"github.com/netplugin/netplugin/state"
)

func main() {
	if err := newApp(os.Stdout, os.Stdin).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "netdcli:", oneLine(err))
		os.Exit(1)
	}
}

// oneLine keeps every error to a single line, as scripts and users expect.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func newApp(out io.Writer, in io.Reader) *cli.App {
	host, _ := os.Hostname()
	return &cli.App{
		Name:      "netdcli",
		Usage:     "write and read netplugin's desired state",
		UsageText: "netdcli -oper create|get|delete|attach|detach -construct global|tenant|network|endpoint|policy|rule|netprofile|group [flags] NAME\n   netdcli -cfg FILE|- [-dry-run] [-prune docker] [-json]",
		Writer:    out,
		Reader:    in,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "oper", Usage: "create, get, delete, attach or detach"},
			&cli.StringFlag{Name: "construct", Usage: "global, tenant, network, endpoint, policy, rule, netprofile or group"},
			&cli.StringFlag{Name: "tenant", Value: core.DefaultTenant},
			&cli.StringFlag{Name: "net-id", Usage: "network of an endpoint"},
			&cli.IntFlag{Name: "tag", Usage: "VLAN tag or VNI; 0 = allocate"},
			&cli.StringFlag{Name: "tag-type", Usage: "vlan or vxlan; empty = the global default (vlan unless set with -construct global -tag-type)"},
			&cli.StringFlag{Name: "subnet", Usage: "network subnet CIDR; empty = allocate from the global pool"},
			&cli.StringFlag{Name: "gw", Usage: "network gateway IP"},
			&cli.StringFlag{Name: "driver", Usage: "network driver; empty = the global default"},
			&cli.StringSliceFlag{Name: "opt", Usage: "driver option KEY=VALUE (repeatable)"},
			&cli.StringFlag{Name: "parent", Usage: "host interface of a macvlan/ipvlan network (same as -opt parent=...)"},
			&cli.StringFlag{Name: "mode", Usage: "macvlan or ipvlan mode (same as -opt mode=...)"},
			&cli.StringFlag{Name: "ip-address", Usage: "endpoint IP; empty or auto = allocate"},
			&cli.StringFlag{Name: "mac", Usage: "endpoint MAC; empty = generate"},
			&cli.StringFlag{Name: "container-id", Usage: "Docker container ID or name to attach to"},
			&cli.StringFlag{Name: "netns", Usage: "network namespace name or path to attach to"},
			&cli.StringFlag{Name: "host", Value: host, Usage: "host label of the endpoint"},
			&cli.StringFlag{Name: "vlans", Usage: "global VLAN range, e.g. 1-4094"},
			&cli.StringFlag{Name: "vxlans", Usage: "global VXLAN range, e.g. 1-10000"},
			&cli.StringFlag{Name: "subnet-pool", Usage: "global pool auto subnets come from"},
			&cli.IntFlag{Name: "subnet-len", Usage: "prefix length of auto subnets"},
			&cli.StringFlag{Name: "etcd-url", Value: state.DefaultEndpoints[0], Usage: "etcd endpoints, comma separated", EnvVars: []string{"NETPLUGIN_ETCD"}},
			&cli.StringFlag{Name: "etcd-cacert", EnvVars: []string{"NETPLUGIN_ETCD_CACERT"}, Usage: "CA of the etcd cluster (default: what the local agent published)"},
			&cli.StringFlag{Name: "etcd-cert", EnvVars: []string{"NETPLUGIN_ETCD_CERT"}, Usage: "etcd client certificate"},
			&cli.StringFlag{Name: "etcd-key", EnvVars: []string{"NETPLUGIN_ETCD_KEY"}, Usage: "key of -etcd-cert"},
			&cli.StringFlag{Name: "run-dir", Value: state.DefaultRunDir, EnvVars: []string{"NETPLUGIN_RUN_DIR"}, Usage: "where a local agent publishes its embedded etcd's certificates"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "how long to wait for etcd"},
			&cli.StringFlag{Name: "docker-socket", Value: "/var/run/docker.sock", Usage: "Docker API socket, to check containers on this host"},
			&cli.StringFlag{Name: "cfg", Usage: "apply a whole desired-state JSON document (FILE or - for stdin)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "with -cfg: print what would change, change nothing"},
			&cli.StringFlag{Name: "prune", Usage: "with -cfg: 'docker' also deletes networks and endpoints Docker created that the document does not name"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		}, policyFlags()...),
		Action: func(c *cli.Context) error { return dispatch(c, out, in) },
	}
}

func dispatch(c *cli.Context, out io.Writer, in io.Reader) error {
	ctx := c.Context
	if c.NArg() > 1 {
		return fmt.Errorf("one NAME expected, got %q (flags go before NAME)", strings.Join(c.Args().Slice(), " "))
	}
	if c.String("cfg") == "" && c.String("oper") == "" {
		return fmt.Errorf("-oper or -cfg is required; see netdcli -h")
	}
	if c.String("cfg") == "" && (c.IsSet("dry-run") || c.IsSet("prune")) {
		return fmt.Errorf("%w: -dry-run and -prune go with -cfg", core.ErrInvalid)
	}
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetOutput(io.Discard)
	endpoints, files := state.ResolveTLS(c.String("run-dir"), strings.Split(c.String("etcd-url"), ","),
		state.TLSFiles{CA: c.String("etcd-cacert"), Cert: c.String("etcd-cert"), Key: c.String("etcd-key")})
	s, err := state.Connect(ctx, endpoints, c.Duration("timeout"), log, state.WithTLS(files))
	if err != nil {
		return err
	}
	defer s.Close()
	cmd := &command{c: c, s: s, out: out, name: c.Args().First()}
	if f := c.String("cfg"); f != "" {
		return cmd.applyFile(ctx, f, in)
	}
	oper, construct := c.String("oper"), c.String("construct")
	if oper != "get" {
		// An apply a crash interrupted is completed before anything else, so
		// that this command sees, and changes, the whole document.
		if err := s.ResumeApply(ctx); err != nil {
			return err
		}
	}
	if construct == "" {
		return fmt.Errorf("-construct is required: global, tenant, network, endpoint, policy, rule, netprofile or group")
	}
	if construct != "global" && oper != "get" && cmd.name == "" {
		return fmt.Errorf("-oper %s -construct %s needs a NAME", oper, construct)
	}
	type op struct{ oper, construct string }
	handlers := map[op]func(context.Context) error{
		{"create", "global"}: cmd.setGlobal, {"get", "global"}: cmd.getGlobal,
		{"create", "tenant"}: cmd.createTenant, {"get", "tenant"}: cmd.getTenants, {"delete", "tenant"}: cmd.deleteTenant,
		{"create", "network"}: cmd.createNetwork, {"get", "network"}: cmd.getNetworks, {"delete", "network"}: cmd.deleteNetwork,
		{"create", "endpoint"}: cmd.createEndpoint, {"get", "endpoint"}: cmd.getEndpoints, {"delete", "endpoint"}: cmd.deleteEndpoint,
		{"attach", "endpoint"}: cmd.attach, {"detach", "endpoint"}: cmd.detach,
		{"get", "host"}: cmd.getHosts, {"delete", "host"}: cmd.deleteHost,
	}
	for k, h := range cmd.policyHandlers() {
		handlers[op{k[0], k[1]}] = h
	}
	h, ok := handlers[op{oper, construct}]
	if !ok {
		return fmt.Errorf("-oper %s -construct %s is not supported", oper, construct)
	}
	return h(ctx)
}

type command struct {
	c    *cli.Context
	s    *state.Store
	out  io.Writer
	name string
}

// containerCheck resolves a container on this host so that a typo or a stopped
// container is refused before anything is written. Endpoints homed on another
// host are checked by that host's agent, which reports in status.
func (m *command) containerCheck(ctx context.Context, idOrName, epHost string) (string, error) {
	if idOrName == "" || epHost != m.c.String("host") {
		return idOrName, nil
	}
	ctr, err := docker.New(m.c.String("docker-socket")).Inspect(ctx, idOrName)
	if err != nil {
		return "", fmt.Errorf("container %s: %w", idOrName, err)
	}
	if _, err := ctr.NetNSPath(); err != nil {
		return "", err
	}
	return ctr.ID, nil
}

// tenantOf returns the tenant a command means. -tenant wins; without it a name
// that exists in the default tenant is taken from there, and one that exists in
// exactly one other tenant from that tenant, so that
// `netdcli -oper attach -construct endpoint ... NAME` works as in the seed
// without repeating the tenant of a network created with -tenant.
func (m *command) tenantOf(ctx context.Context, kind, name string) (string, error) {
	if m.c.IsSet("tenant") || name == "" {
		return m.c.String("tenant"), nil
	}
	found, err := m.s.TenantsWith(ctx, kind, name)
	if err != nil {
		return "", err
	}
	for _, t := range found {
		if t == core.DefaultTenant {
			return t, nil
		}
	}
	switch len(found) {
	case 0:
		return core.DefaultTenant, nil // the lookup itself reports "unknown ..."
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%w: %s %q exists in tenants %s; give -tenant", core.ErrInvalid, kind, name, strings.Join(found, ", "))
}

func (m *command) applyFile(ctx context.Context, f string, in io.Reader) error {
	o := state.ApplyOptions{DefaultHost: m.c.String("host")}
	switch p := m.c.String("prune"); p {
	case "":
	case "docker":
		o.PruneDocker = true
	default:
		return fmt.Errorf("%w: -prune %q: the only kind is docker", core.ErrInvalid, p)
	}
	r := in
	if f != "-" {
		file, err := os.Open(f)
		if err != nil {
			return fmt.Errorf("config document: %w", err)
		}
		defer file.Close()
		r = file
	}
	doc, err := state.ParseDocument(r)
	if err != nil {
		return err
	}
	if m.c.Bool("dry-run") {
		p, err := m.s.PlanApply(ctx, doc, o)
		if err != nil {
			return err
		}
		return m.printPlan(p)
	}
	sum, err := m.s.ApplyWith(ctx, doc, o)
	if err != nil {
		return err
	}
	if m.c.Bool("json") {
		return m.printJSON(sum)
	}
	fmt.Fprintf(m.out, "applied: %d created, %d updated, %d deleted\n", sum.Created, sum.Updated, sum.Deleted)
	if sum.Kept > 0 {
		fmt.Fprintf(m.out, "kept: %d not in the document but made by Docker, or holding what Docker made (-dry-run lists them, -prune docker deletes them)\n", sum.Kept)
	}
	return nil
}

func (m *command) printPlan(p state.Plan) error {
	if m.c.Bool("json") {
		if p.Changes == nil {
			p.Changes = []state.Change{}
		}
		return m.printJSON(p)
	}
	if p.Pending != "" {
		fmt.Fprintln(m.out, "pending:", p.Pending)
	}
	for _, c := range p.Changes {
		fmt.Fprintln(m.out, c.String())
	}
	fmt.Fprintf(m.out, "plan: %d to create, %d to update, %d to delete, %d kept (dry run: nothing changed)\n",
		p.Created, p.Updated, p.Deleted, p.Kept)
	return nil
}

func (m *command) setGlobal(ctx context.Context) error {
	g, err := m.s.SetGlobal(ctx, core.Global{VLANs: m.c.String("vlans"), VXLANs: m.c.String("vxlans"),
		DefaultDriver: m.c.String("driver"), DefaultTagType: m.c.String("tag-type"), SubnetPool: m.c.String("subnet-pool"), SubnetLen: m.c.Int("subnet-len")})
	if err != nil {
		return err
	}
	return m.printGlobal(g)
}

func (m *command) getGlobal(ctx context.Context) error {
	g, _, err := m.s.Global(ctx)
	if err != nil {
		return err
	}
	return m.printGlobal(g)
}

func (m *command) createTenant(ctx context.Context) error {
	return m.s.CreateTenant(ctx, m.name)
}

func (m *command) deleteTenant(ctx context.Context) error { return m.s.DeleteTenant(ctx, m.name) }

// deleteHost forgets a host gone for good and frees what it held.
func (m *command) deleteHost(ctx context.Context) error {
	d, err := m.s.DeleteHost(ctx, m.name)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(m.out, "host %s deleted: %d endpoints, %d Docker networks, %d reservations, %d routed blocks freed\n",
		m.name, d.Endpoints, d.DockerNetworks, d.Reservations, d.Blocks)
	return err
}

func (m *command) getHosts(ctx context.Context) error {
	var hs []core.HostInfo
	if m.name != "" {
		h, ok, err := m.s.Host(ctx, m.name)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: host %q is not registered", core.ErrNotFound, m.name)
		}
		hs = []core.HostInfo{h}
	} else {
		var err error
		if hs, err = m.s.Hosts(ctx); err != nil {
			return err
		}
	}
	if m.c.Bool("json") {
		return m.printJSON(hs)
	}
	rows := [][]string{}
	for _, h := range hs {
		rows = append(rows, []string{h.Name, dash(h.VTEP), strings.Join(h.Drivers, ","), h.Started})
	}
	return m.table("HOST\tVTEP\tDRIVERS\tSTARTED", rows)
}

func (m *command) getTenants(ctx context.Context) error {
	if m.name != "" {
		ts, err := m.s.Tenant(ctx, m.name)
		if err != nil {
			return err
		}
		return m.printTenants(ts)
	}
	ts, err := m.s.Tenants(ctx)
	if err != nil {
		return err
	}
	return m.printTenants(ts)
}

func (m *command) createNetwork(ctx context.Context) error {
	opts := map[string]string{}
	for _, o := range m.c.StringSlice("opt") {
		k, v, ok := strings.Cut(o, "=")
		if !ok || k == "" {
			return fmt.Errorf("%w: -opt %q: want KEY=VALUE", core.ErrInvalid, o)
		}
		opts[k] = v
	}
	for _, k := range []string{"parent", "mode"} {
		if v := m.c.String(k); v != "" {
			opts[k] = v
		}
	}
	if len(opts) == 0 {
		opts = nil
	}
	n, err := m.s.CreateNetwork(ctx, core.Network{Tenant: m.c.String("tenant"), Name: m.name, Driver: m.c.String("driver"),
		Encap: m.c.String("tag-type"), Tag: m.c.Int("tag"), Subnet: m.c.String("subnet"), Gateway: m.c.String("gw"), Options: opts})
	if err != nil {
		return err
	}
	return m.printNetworks(ctx, []core.Network{n})
}

func (m *command) getNetworks(ctx context.Context) error {
	if m.name != "" {
		tenant, err := m.tenantOf(ctx, "network", m.name)
		if err != nil {
			return err
		}
		n, _, err := m.s.GetNetwork(ctx, tenant, m.name)
		if err != nil {
			return err
		}
		return m.printNetworks(ctx, []core.Network{n})
	}
	ns, err := m.s.Networks(ctx, m.listTenant())
	if err != nil {
		return err
	}
	return m.printNetworks(ctx, ns)
}

// listTenant is the tenant a listing is limited to: every tenant without -tenant.
func (m *command) listTenant() string {
	if !m.c.IsSet("tenant") {
		return ""
	}
	return m.c.String("tenant")
}

func (m *command) deleteNetwork(ctx context.Context) error {
	tenant, err := m.tenantOf(ctx, "network", m.name)
	if err != nil {
		return err
	}
	return m.s.DeleteNetwork(ctx, tenant, m.name)
}

func (m *command) createEndpoint(ctx context.Context) error {
	ip := m.c.String("ip-address")
	if ip == "auto" {
		ip = ""
	}
	tenant, err := m.tenantOf(ctx, "network", m.c.String("net-id"))
	if err != nil {
		return err
	}
	ep := core.Endpoint{Tenant: tenant, Network: m.c.String("net-id"), Name: m.name, IP: ip,
		MAC: m.c.String("mac"), Host: m.c.String("host"), NetNS: m.c.String("netns"), Group: m.c.String("group")}
	if ref := m.c.String("container-id"); ref != "" {
		id, err := m.containerCheck(ctx, ref, ep.Host)
		if err != nil {
			return err
		}
		ep.ContainerName, ep.ContainerID = ref, id
	}
	if ep.ContainerID != "" && ep.NetNS != "" {
		return fmt.Errorf("%w: give -container-id or -netns, not both", core.ErrInvalid)
	}
	ep, err = m.s.CreateEndpoint(ctx, ep, m.c.Int("tag"))
	if err != nil {
		return err
	}
	return m.printEndpoints(ctx, []core.Endpoint{ep})
}

func (m *command) getEndpoints(ctx context.Context) error {
	if m.name != "" {
		tenant, err := m.tenantOf(ctx, "endpoint", m.name)
		if err != nil {
			return err
		}
		ep, _, err := m.s.GetEndpoint(ctx, tenant, m.name)
		if err != nil {
			return err
		}
		return m.printEndpoints(ctx, []core.Endpoint{ep})
	}
	eps, err := m.s.Endpoints(ctx, m.listTenant(), m.c.String("net-id"))
	if err != nil {
		return err
	}
	return m.printEndpoints(ctx, eps)
}

func (m *command) deleteEndpoint(ctx context.Context) error {
	tenant, err := m.tenantOf(ctx, "endpoint", m.name)
	if err != nil {
		return err
	}
	return m.s.DeleteEndpoint(ctx, tenant, m.name)
}

func (m *command) attach(ctx context.Context) error {
	tenant, err := m.tenantOf(ctx, "endpoint", m.name)
	if err != nil {
		return err
	}
	ep, _, err := m.s.GetEndpoint(ctx, tenant, m.name)
	if err != nil {
		return err
	}
	a := state.Attachment{ContainerName: m.c.String("container-id"), NetNS: m.c.String("netns")}
	if ip := m.c.String("ip-address"); ip != "auto" {
		a.IP = ip // the address in the new host's block, for a move on a routed network
	}
	if m.c.IsSet("host") {
		a.Host = m.c.String("host")
	}
	if a.ContainerName != "" && a.NetNS != "" {
		return fmt.Errorf("%w: give -container-id or -netns, not both", core.ErrInvalid)
	}
	host := ep.Host
	if a.Host != "" {
		host = a.Host
	}
	if a.ContainerID, err = m.containerCheck(ctx, a.ContainerName, host); err != nil {
		return err
	}
	ep, err = m.s.Attach(ctx, tenant, m.name, a)
	if err != nil {
		return err
	}
	return m.printEndpoints(ctx, []core.Endpoint{ep})
}

func (m *command) detach(ctx context.Context) error {
	ref := m.c.String("container-id")
	if ref == "" {
		ref = m.c.String("netns")
	}
	tenant, err := m.tenantOf(ctx, "endpoint", m.name)
	if err != nil {
		return err
	}
	ep, err := m.s.Detach(ctx, tenant, m.name, ref)
	if err != nil {
		return err
	}
	return m.printEndpoints(ctx, []core.Endpoint{ep})
}
