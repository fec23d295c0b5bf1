// Package ovs is the Open vSwitch driver: one integration bridge per host, each
// endpoint a veth whose host end is an access port tagged with its network's
// VLAN, the container end created straight inside the container's namespace
// (or, for Docker, left in the host for Docker to move: see PrepareHandOff).
//
// Hosts are joined either by an uplink trunk port (VLAN networks) or by VXLAN.
// For VXLAN the driver keeps a second, flow-programmed bridge next to the
// integration bridge (like Neutron's br-tun): the integration bridge stays a
// plain NORMAL learning switch, and a patch port carries the local VLANs of
// VXLAN networks, tagged, to the tunnel bridge, whose flows turn local VLAN into
// VNI towards every remote VTEP and back. A single bridge cannot do this: an
// access port's packets are untagged until the NORMAL action tags them, so no
// flow on that bridge can match "local VLAN" before output, and NORMAL cannot
// set a tunnel key per VLAN.
//
// The driver talks OVSDB (RFC 7047) itself through package ovsdb, and batches
// the port inserts of concurrent EnsureEndpoint calls into one transaction
// (group commit, see batch.go). Flows go through ovs-ofctl --bundle replace-flows.
//
// All link work happens through one netlink handle opened in Config.HostNetNS,
// the namespace ovs-vswitchd runs in (default: the process's own), so veth host
// ends land where vswitchd can open them; container namespaces are opened by
// path per endpoint, and links handed off to Docker are made in the process's
// own namespace, where dockerd takes them from. No thread ever switches
// namespace for longer than opening a socket, so one process can drive several
// simulated hosts side by side.
//
// Ownership: every OVSDB row we create carries external_ids
// netplugin-owner=netplugin and netplugin-host=<host label> (plus a role, and
// for endpoints the endpoint key and spec fingerprint), every veth an alias
// netplugin:ovsep:<fingerprint>:<key>. Rows and links without the mark are
// never changed; rows marked by another host label (the host was renamed, or
// another agent shares this OVS) are left alone and reported, never swept
// away. Rows marked before the host label was recorded count as ours.
package ovs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
	"github.com/netplugin/netplugin/internal/nl"
)

// Name is the driver's name in network specs.
const Name = "ovs"

// Defaults of Config.
const (
	DefaultOVSDB        = "unix:/run/openvswitch/db.sock"
	DefaultBridge       = "np-int"
	DefaultTunnelBridge = "np-tun"
	DefaultDatapathType = "system"
	DefaultTimeout      = 10 * time.Second
	DefaultBatchWindow  = 300 * time.Microsecond
	DefaultMaxBatch     = 128
	DefaultFlowRefresh  = time.Minute
)

const dbName = "Open_vSwitch"

// Ownership marks. Every OVSDB row the driver creates carries extOwner; the
// other keys say what the row is. The mark, not the name, decides what is ours.
const (
	extOwner    = "netplugin-owner"
	ownerValue  = "netplugin"
	extHost     = "netplugin-host" // the --host-label of the agent that made the row
	extRole     = "netplugin-role"
	extEndpoint = "netplugin-endpoint" // tenant/name of the endpoint
	extFP       = "netplugin-fp"       // EndpointSpec.Fingerprint()
	extNet      = "netplugin-net"      // tenant/name of the endpoint's network
	extPeer     = "netplugin-peer"     // peer host name of a tunnel port
	// extNetPrefix + tenant/name on the integration bridge records a network
	// as "<fingerprint>:<encap>:<tag>:<local vlan>", so that a restarted agent
	// finds the same local VLAN for a VXLAN network.
	extNetPrefix = "netplugin-net:"
)

// Roles of the rows we own.
const (
	roleIntegration = "integration"
	roleTunnelBr    = "tunnel-bridge"
	roleLocal       = "local"
	roleUplink      = "uplink"
	rolePatch       = "patch"
	roleTunnel      = "tunnel"
	roleEndpoint    = "endpoint"
)

// kindEP is the alias kind of endpoint veths: netplugin:ovsep:<fingerprint>:<tenant/ep>.
const kindEP = "ovsep"

// Config says which OVS to program and how.
type Config struct {
	// Host is the agent's --host-label; every row we create is marked with it.
	Host string
	// OVSDB is the ovsdb-server address, "unix:PATH" or "tcp:HOST:PORT".
	OVSDB string
	// RunDir holds ovs-vswitchd's sockets and pid file (OVS_RUNDIR). Default:
	// the directory of a unix OVSDB socket, else /run/openvswitch.
	RunDir string
	// Bridge is the integration bridge, TunnelBridge the VXLAN bridge.
	Bridge       string
	TunnelBridge string
	// DatapathType of the bridges we create: "system" or, without the OVS
	// kernel module, "netdev" (userspace).
	DatapathType string
	// Uplink, if set, is a host interface added as a trunk port carrying the
	// VLANs of the VLAN networks. It must exist; it is never taken implicitly.
	Uplink string
	// VTEP is this host's underlay IPv4 address; empty disables VXLAN tunnels.
	VTEP string
	// MTU is the MTU of container interfaces on VXLAN networks; 0: the MTU
	// of the interface holding VTEP (in HostNetNS) minus 50, the VXLAN
	// encapsulation, so that no tunnelled packet exceeds the underlay's.
	MTU int
	// FlowRefresh is how often the tunnel flows are rewritten although the
	// wanted set did not change, to put back flows deleted behind our back
	// (ovs-ofctl is a fork, so not on every sync). Default one minute.
	FlowRefresh time.Duration
	// HostNetNS is the path of the network namespace ovs-vswitchd runs in, where
	// the host ends of veths must live. Empty means the driver's own namespace.
	HostNetNS string
	// Ofctl is the ovs-ofctl binary; default found in PATH or sbin.
	Ofctl string
	// VswitchdCtl is ovs-vswitchd's control socket, which policy updates
	// use to flush connections from the userspace datapath's conntrack;
	// default RunDir/ovs-vswitchd.ctl if it exists, else Debian's
	// RunDir/ovs-vswitchd.<pid>.ctl.
	VswitchdCtl string
	// Timeout bounds every OVSDB call, ovs-ofctl run and wait for vswitchd.
	Timeout time.Duration
	// BatchWindow is how long a batch of port changes collects companions
	// before it commits; MaxBatch commits earlier once that many are waiting.
	BatchWindow time.Duration
	MaxBatch    int
}

// Driver programs one host's OVS. It is safe for concurrent use.
type Driver struct {
	cfg Config
	log *logrus.Entry
	db  *ovsdb.Reconnecting

	// host is a netlink handle inside HostNetNS; hostNS keeps that namespace
	// open so that our handle stays valid even if its name is removed.
	host   *netlink.Handle
	hostNS netns.NsHandle
	// rt is a netlink handle in this process's own namespace, where a
	// container runtime that runs there (dockerd, whose plugin we serve)
	// takes handed-off links from; see PrepareHandOff. It is host itself
	// when HostNetNS is empty.
	rt   *netlink.Handle
	rtNS netns.NsHandle

	// infraMu serialises changes to bridges, uplink, tunnels and flows: they
	// are read-modify-write of shared rows (the bridge's network records).
	infraMu sync.Mutex
	// remotes is what the agent last gave SetRemotes; remotesKnown is false
	// until the first call: before that an existing tunnel port may lead to a
	// live peer we have not heard of yet.
	remotes      map[string]core.NetRemotes
	remotesKnown bool
	// applied is the flow table last written to the tunnel bridge, with what
	// it was written to (see syncFlows), so that an unchanged set costs no fork.
	applied flowState
	// underlayMTU caches the MTU of the interface holding the VTEP.
	underlayMTU atomic.Int64

	// foreign is the last reported set of ports of another host label.
	foreignMu sync.Mutex
	foreign   string
	// nets caches the network records of the bridge for EnsureEndpoint; it is
	// refreshed by every infrastructure change and on a miss.
	netsMu sync.Mutex
	nets   map[string]netRecord

	// epLocks serialises work on one endpoint (by key) so that two workers
	// never race to create the same port.
	epLocks nl.Locks
	// nsLocks serialise picking the lowest free ethN and creating it within
	// one container namespace (by path): two endpoints of one container would
	// otherwise race for the same name.
	nsLocks nl.Locks
	batch   *batcher

	// pol is the policy state (policy.go), qos our linux-noop QoS row (qos.go).
	pol *policyState
	qos noopQoS
}

var (
	_ core.Driver    = (*Driver)(nil)
	_ core.Forwarder = (*Driver)(nil)
	_ core.HandOff   = (*Driver)(nil)
	_ core.Noter     = (*Driver)(nil)
)

// New returns a driver for cfg. It fails only on bad configuration: an agent
// must start while OVS is down and report the error per object instead, so
// OVSDB not answering is only logged (ctx bounds that probe). Call Close when
// done.
func New(ctx context.Context, cfg Config, log *logrus.Entry) (*Driver, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, log: log.WithFields(logrus.Fields{"driver": Name, "bridge": cfg.Bridge}),
		nets: map[string]netRecord{}, pol: newPolicyState(cfg.Host)}
	d.db = ovsdb.NewReconnecting(cfg.OVSDB, d.log, nil)
	d.batch = &batcher{window: cfg.BatchWindow, max: cfg.MaxBatch, timeout: cfg.Timeout, commit: d.commitPorts}
	path := cfg.HostNetNS
	if path == "" {
		// The process's namespace, not the calling thread's: the handle must
		// not depend on which OS thread New happens to run on.
		path = "/proc/self/ns/net"
	}
	h, ns, err := nl.InNS(path)
	if err != nil {
		return nil, fmt.Errorf("ovs: host namespace: %w", err)
	}
	d.host, d.hostNS = h, ns
	d.rt, d.rtNS = h, ns
	if cfg.HostNetNS != "" {
		rt, rtNS, err := nl.InNS("/proc/self/ns/net")
		if err != nil {
			_ = d.db.Close()
			d.host.Close()
			_ = d.hostNS.Close()
			return nil, fmt.Errorf("ovs: own namespace: %w", err)
		}
		d.rt, d.rtNS = rt, rtNS
	}
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := d.db.Client(pctx); err != nil {
		d.log.WithError(err).Warn("OVSDB not reachable yet; every call will retry")
	}
	return d, nil
}

func (c *Config) setDefaults() error {
	if c.OVSDB == "" {
		c.OVSDB = DefaultOVSDB
	}
	if c.RunDir == "" {
		c.RunDir = "/run/openvswitch"
		if p, ok := strings.CutPrefix(c.OVSDB, "unix:"); ok {
			c.RunDir = filepath.Dir(p)
		}
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.TunnelBridge == "" {
		c.TunnelBridge = DefaultTunnelBridge
	}
	if c.DatapathType == "" {
		c.DatapathType = DefaultDatapathType
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.BatchWindow <= 0 {
		c.BatchWindow = DefaultBatchWindow
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.FlowRefresh <= 0 {
		c.FlowRefresh = DefaultFlowRefresh
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return fmt.Errorf("ovs: %w: MTU %d outside 576-65535", core.ErrInvalid, c.MTU)
	}
	// Bridges are kernel (or tap) devices too: 15 bytes at most.
	for _, n := range []string{c.Bridge, c.TunnelBridge, c.Uplink} {
		if len(n) > 15 || strings.ContainsAny(n, " /:") {
			return fmt.Errorf("ovs: %w: interface name %q (at most 15 bytes, no spaces, '/' or ':')", core.ErrInvalid, n)
		}
	}
	if c.Bridge == c.TunnelBridge {
		return fmt.Errorf("ovs: %w: bridge and tunnel bridge are both %q", core.ErrInvalid, c.Bridge)
	}
	if c.VTEP != "" {
		if ip := net.ParseIP(c.VTEP).To4(); ip == nil {
			return fmt.Errorf("ovs: %w: VTEP %q is not an IPv4 address", core.ErrInvalid, c.VTEP)
		}
		if c.Ofctl == "" {
			p, err := findBinary("ovs-ofctl")
			if err != nil {
				return fmt.Errorf("ovs: VXLAN needs ovs-ofctl: %w", err)
			}
			c.Ofctl = p
		}
	}
	return nil
}

// Close releases the OVSDB connection and the namespace handles.
func (d *Driver) Close() error {
	err := d.db.Close()
	if d.rt != d.host {
		d.rt.Close()
		_ = d.rtNS.Close()
	}
	d.host.Close()
	_ = d.hostNS.Close()
	return err
}

// Name implements core.Driver.
func (d *Driver) Name() string { return Name }

// tunnels reports whether this host does VXLAN at all.
func (d *Driver) tunnels() bool { return d.cfg.VTEP != "" }

// Patch port names: only OVS sees them, so they need no kernel-length limit.
func (d *Driver) intPatch() string { return d.cfg.Bridge + "-to-tun" }
func (d *Driver) tunPatch() string { return d.cfg.TunnelBridge + "-to-int" }

// opCtx bounds one driver operation so that a stuck ovsdb-server or vswitchd
// turns into an error instead of a hang.
func (d *Driver) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.cfg.Timeout)
}

// tx runs one OVSDB transaction. Read-only transactions are retried once on
// a lost connection (ovsdb-server restarted): re-reading is always safe, while
// a write whose answer was lost may or may not have committed, which only the
// next Ensure's fresh read can tell.
func (d *Driver) tx(ctx context.Context, readOnly bool, ops ...ovsdb.Operation) ([]ovsdb.OperationResult, error) {
	for attempt := 0; ; attempt++ {
		c, err := d.db.Client(ctx)
		if err != nil {
			return nil, fmt.Errorf("connect to OVSDB %s: %w", d.cfg.OVSDB, err)
		}
		res, err := c.Transact(ctx, dbName, ops...)
		if err != nil && readOnly && attempt == 0 && errors.Is(err, ovsdb.ErrDisconnected) {
			continue
		}
		if err != nil {
			return res, fmt.Errorf("OVSDB %s: %w", d.cfg.OVSDB, err)
		}
		return res, nil
	}
}

// ready fails with a clear error when OVSDB does not answer or ovs-vswitchd
// is not running, before anything is read or written.
func (d *Driver) ready(ctx context.Context) error {
	if _, err := d.db.Client(ctx); err != nil {
		return fmt.Errorf("connect to OVSDB %s: %w", d.cfg.OVSDB, err)
	}
	return d.vswitchdUp()
}

// vswitchdPid is the pid in ovs-vswitchd's pid file ("" if none): a new one
// means a restarted vswitchd, whose tunnel bridge has no flows yet.
func (d *Driver) vswitchdPid() string {
	b, _ := os.ReadFile(filepath.Join(d.cfg.RunDir, "ovs-vswitchd.pid"))
	return strings.TrimSpace(string(b))
}

// vswitchdUp fails when ovs-vswitchd is not running: the database would accept
// our rows, but nothing would program them, and the agent must say so.
func (d *Driver) vswitchdUp() error {
	pidfile := filepath.Join(d.cfg.RunDir, "ovs-vswitchd.pid")
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return fmt.Errorf("ovs-vswitchd is not running (no pid file %s): %w", pidfile, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("ovs-vswitchd pid file %s: %w", pidfile, err)
	}
	// The comm check guards against a stale pid file whose pid was reused.
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != "ovs-vswitchd" {
		return fmt.Errorf("ovs-vswitchd is not running (pid %d from %s is gone)", pid, pidfile)
	}
	return nil
}

// lockKey serialises work on one endpoint key.
func (d *Driver) lockKey(key string) func() { return d.epLocks.Lock(key) }

// ours reports whether an external_ids map carries our owner mark and this
// host's label (or no label: a row from before labels were recorded).
func (d *Driver) ours(ext map[string]string) bool {
	return ext[extOwner] == ownerValue && (ext[extHost] == "" || ext[extHost] == d.cfg.Host)
}

// otherHost returns the host label of a row marked by another netplugin agent.
func (d *Driver) otherHost(ext map[string]string) (string, bool) {
	h := ext[extHost]
	return h, ext[extOwner] == ownerValue && h != "" && h != d.cfg.Host
}

// marks returns the external_ids of a row we create with the given role.
func (d *Driver) marks(role string, kv ...string) map[string]string {
	m := map[string]string{extOwner: ownerValue, extRole: role}
	if d.cfg.Host != "" {
		m[extHost] = d.cfg.Host
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// validateTag refuses tags the bridge cannot carry; core validates too, but a
// bad tag must never reach OVS.
func validateTag(n core.NetworkSpec) error {
	switch n.Encap {
	case core.EncapVLAN:
		if n.Tag < 1 || n.Tag > 4094 {
			return fmt.Errorf("%w: network %s: VLAN %d outside 1-4094", core.ErrInvalid, n.Key(), n.Tag)
		}
	case core.EncapVXLAN:
		if n.Tag < 1 || n.Tag > 16777215 {
			return fmt.Errorf("%w: network %s: VNI %d outside 1-16777215", core.ErrInvalid, n.Key(), n.Tag)
		}
	default:
		return fmt.Errorf("%w: network %s: encap %q (want %s or %s)", core.ErrInvalid, n.Key(), n.Encap, core.EncapVLAN, core.EncapVXLAN)
	}
	return nil
}

func findBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or sbin", name)
}
