// Package ipvlan is the driver whose endpoints are ipvlan children of a host
// ("parent") interface, created straight inside the container's namespace.
//
// Network options:
//
//	parent  host interface the children hang off (required; it must exist)
//	mode    l2 (default) or l3
//
// In l2 mode the children sit on the parent's L2 segment and route through the
// network's gateway. In l3 mode the parent's namespace routes for them: a child
// has no ARP, so its default route points at the device itself (like
// `ip route add default dev eth0`), and another host's endpoints are reached
// through a route on this host to their subnet via that host's underlay IP.
//
// All children of one parent share one ipvlan "port" whose mode is the mode of
// the last child created, so two networks in different modes on one parent
// would silently switch each other's mode: the driver refuses that (ErrInUse).
//
// Children share the parent's MAC address (the kernel refuses another), so
// core.Endpoint.MAC is ignored by this driver. There is no host-side link
// either: the IfName and IfIndex this driver reports are the child's, inside
// the container's namespace.
package ipvlan

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// Name is the driver's name in network specs.
const Name = "ipvlan"

// Network option names and the modes of OptMode.
const (
	OptParent = "parent"
	OptMode   = "mode"
	ModeL2    = "l2"
	ModeL3    = "l3"
)

// DefaultStateDir is where records live when Config.StateDir is empty (in a
// subdirectory named after Config.Host when that is set). It is on
// /run on purpose: the records describe children inside container namespaces,
// and no namespace survives a reboot, so neither should the records; an agent
// crash or restart keeps them.
const DefaultStateDir = "/run/netplugin/ipvlan"

// kindEP is the alias kind of an endpoint's child:
// netplugin:ipep[@<host>]:<fingerprint>:<tenant/ep>.
const kindEP = "ipep"

// Config configures the driver.
type Config struct {
	// StateDir holds one record per network and endpoint (see record.go); a new
	// Driver on the same StateDir adopts what an earlier one made.
	StateDir string
	// HostNetNS is the path of the namespace that holds the parent interfaces.
	// Empty means the agent's own namespace.
	HostNetNS string
	// Host is the agent's host label. It qualifies the children's ownership
	// mark (ipep@<host>) and the default state dir (DefaultStateDir/<host>), so
	// that agents sharing one kernel (tests, a local cluster in namespaces)
	// never take each other's endpoints for stale ones. Empty: unqualified.
	Host string
}

// Driver programs ipvlan children. It is safe for concurrent use: one mutex
// serialises every operation, because choosing a free interface name in a
// namespace and checking the parent's mode against other networks are
// read-then-write steps, and each operation takes only a few milliseconds.
type Driver struct {
	log  *logrus.Entry
	cfg  Config
	kind string // alias kind of our children, kindEP qualified by Config.Host
	recs records
	mu   sync.Mutex
	// names serialises picking and creating an ethN per container namespace
	// (also under mu today; the naming stays safe should mu ever narrow).
	names nl.Locks
}

var (
	_ core.Driver  = (*Driver)(nil)
	_ core.HandOff = (*Driver)(nil)
)

// New returns the driver. It touches nothing until the first call, so an agent
// starts even when the state dir or the host namespace is not there yet.
func New(log *logrus.Entry, cfg Config) *Driver {
	kind := kindEP
	// ':' separates alias fields, '/' path elements.
	owner := strings.NewReplacer(":", "_", "/", "_").Replace(cfg.Host)
	if owner != "" {
		kind += "@" + owner
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(DefaultStateDir, owner)
	}
	l := log.WithField("driver", Name)
	return &Driver{log: l, cfg: cfg, kind: kind, recs: records{dir: cfg.StateDir, log: l}}
}

// Name implements core.Driver.
func (d *Driver) Name() string { return Name }

// options are a network's parsed driver options.
type options struct {
	Parent string
	Mode   string
}

// parseOptions validates a network's options without looking at the host.
// Unknown options are refused: a misspelt "mdoe=l3" must not quietly give l2.
func parseOptions(n core.Network) (options, error) {
	o := options{Parent: n.Options[OptParent], Mode: n.Options[OptMode]}
	for k := range n.Options {
		// host-prefix sizes the per-host blocks of l3 networks (core.Network.HostBlockLen).
		if k != OptParent && k != OptMode && k != "host-prefix" {
			return o, fmt.Errorf("%w: network %s: unknown ipvlan option %q (want %s, %s, host-prefix)", core.ErrInvalid, n.Key(), k, OptParent, OptMode)
		}
	}
	if o.Parent == "" {
		return o, fmt.Errorf("%w: network %s: ipvlan needs option %s (the host interface)", core.ErrInvalid, n.Key(), OptParent)
	}
	if len(o.Parent) > 15 || strings.ContainsAny(o.Parent, "/: \t") {
		return o, fmt.Errorf("%w: network %s: parent %q is not an interface name", core.ErrInvalid, n.Key(), o.Parent)
	}
	switch o.Mode {
	case "":
		o.Mode = ModeL2
	case ModeL2, ModeL3:
	default:
		return o, fmt.Errorf("%w: network %s: ipvlan mode %q: want %s or %s", core.ErrInvalid, n.Key(), o.Mode, ModeL2, ModeL3)
	}
	if _, err := core.ParseCIDR(n.Subnet); err != nil {
		return o, fmt.Errorf("network %s: %w", n.Key(), err)
	}
	return o, nil
}

func netlinkMode(mode string) netlink.IPVlanMode {
	if mode == ModeL3 {
		return netlink.IPVLAN_MODE_L3
	}
	return netlink.IPVLAN_MODE_L2
}

// host opens a netlink handle in the host namespace; close it with the func.
func (d *Driver) host() (*netlink.Handle, func(), error) {
	if d.cfg.HostNetNS == "" {
		// Our own namespace needs no setns (which would need CAP_SYS_ADMIN): a
		// plain socket opens in the calling thread's namespace, and that is the
		// process's, as code that switches a thread keeps it locked meanwhile.
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, nil, fmt.Errorf("netlink: %w", err)
		}
		return h, h.Close, nil
	}
	h, ns, err := nl.InNS(d.cfg.HostNetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("host namespace: %w", err)
	}
	return h, func() { h.Close(); ns.Close() }, nil
}

// parentLink finds the parent in the host namespace: ErrNotFound if absent.
func parentLink(h *netlink.Handle, netKey, parent string) (netlink.Link, error) {
	l, err := h.LinkByName(parent)
	if nl.IsNotFound(err) {
		return nil, fmt.Errorf("%w: network %s: parent interface %s does not exist on this host", core.ErrNotFound, netKey, parent)
	}
	if err != nil {
		return nil, fmt.Errorf("look up parent %s: %w", parent, err)
	}
	return l, nil
}

// checkParentMode refuses a parent that another network already uses in the
// other mode (see the package comment). Both kinds of records count: an
// endpoint may outlive its network's record for a moment during removal.
func (d *Driver) checkParentMode(netKey string, o options) error {
	nets, err := d.recs.listNets()
	if err != nil {
		return err
	}
	eps, err := d.recs.listEPs()
	if err != nil {
		return err
	}
	users := make([]netRecord, 0, len(nets)+len(eps))
	users = append(users, nets...)
	for _, e := range eps {
		users = append(users, netRecord{Key: e.Net, Parent: e.Parent, Mode: e.Mode})
	}
	for _, u := range users {
		if u.Key != netKey && u.Parent == o.Parent && u.Mode != o.Mode {
			return fmt.Errorf("%w: parent %s already carries network %s in ipvlan mode %s; network %s wants %s (one parent has one mode)",
				core.ErrInUse, o.Parent, u.Key, u.Mode, netKey, o.Mode)
		}
	}
	return nil
}

// EnsureNetwork checks the options and the parent and records the network.
// There is nothing to create in the kernel: the parent's ipvlan port appears
// with its first child.
func (d *Driver) EnsureNetwork(ctx context.Context, n core.NetworkSpec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o, err := parseOptions(n.Network)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	h, done, err := d.host()
	if err != nil {
		return err
	}
	defer done()
	if _, err := parentLink(h, n.Key(), o.Parent); err != nil {
		return err
	}
	if err := d.checkParentMode(n.Key(), o); err != nil {
		return err
	}
	if err := d.recs.putNet(netRecord{Key: n.Key(), Fingerprint: n.Fingerprint(), Parent: o.Parent, Mode: o.Mode}); err != nil {
		return fmt.Errorf("ensure network %s: %w", n.Key(), err)
	}
	d.log.WithFields(logrus.Fields{"net": n.Key(), "parent": o.Parent, "mode": o.Mode}).Debug("network ensured")
	return nil
}

// RemoveNetwork forgets the network. Its endpoints are removed before it (the
// plan's order contract), which is what releases the parent's port.
func (d *Driver) RemoveNetwork(ctx context.Context, o core.ObservedNetwork) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recs.delNet(o.Key); err != nil {
		return fmt.Errorf("remove network %s: %w", o.Key, err)
	}
	return nil
}

// Observe reports the recorded networks and endpoints. An endpoint is healthy
// when its namespace is still the one recorded and holds our child, up, in the
// recorded mode, on the recorded parent, with its address — and its network
// still wants that parent and mode. An endpoint whose child or namespace is
// gone is reported unhealthy (so the agent re-ensures or removes it), never
// dropped: dropping it would leak its record.
func (d *Driver) Observe(ctx context.Context) (core.Actual, error) {
	if err := ctx.Err(); err != nil {
		return core.Actual{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	a := core.Actual{Networks: map[string]core.ObservedNetwork{}, Endpoints: map[string]core.ObservedEndpoint{}}
	nets, err := d.recs.listNets()
	if err != nil {
		return a, err
	}
	netByKey := map[string]netRecord{}
	for _, n := range nets {
		netByKey[n.Key] = n
		a.Networks[n.Key] = core.ObservedNetwork{Key: n.Key, Fingerprint: n.Fingerprint}
	}
	eps, err := d.recs.listEPs()
	if err != nil {
		return a, err
	}
	if len(eps) == 0 {
		return a, nil
	}
	h, done, err := d.host()
	if err != nil {
		return a, err
	}
	defer done()
	parents := map[string]int{} // name -> ifindex in the host namespace, 0 if absent
	for _, rec := range eps {
		if _, ok := parents[rec.Parent]; !ok {
			if l, err := h.LinkByName(rec.Parent); err == nil {
				parents[rec.Parent] = l.Attrs().Index
			} else {
				parents[rec.Parent] = 0
			}
		}
		obs := core.ObservedEndpoint{Key: rec.Key, Fingerprint: rec.Fingerprint, IfName: rec.IfName, IfIndex: rec.IfIndex}
		if link, sound := d.observeChild(h, rec, parents[rec.Parent]); link != nil {
			obs.IfName, obs.IfIndex = link.Attrs().Name, link.Attrs().Index
			// A network whose parent or mode changed wants its children rebuilt,
			// though the endpoint's own fingerprint did not change.
			n, hasNet := netByKey[rec.Net]
			obs.Healthy = sound && (!hasNet || (n.Parent == rec.Parent && n.Mode == rec.Mode))
		}
		a.Endpoints[rec.Key] = obs
	}
	return a, nil
}

// observeChild returns the record's child, if it is there, and whether it is
// sound (see childSound). A missing parent took its children with it. host is
// the host namespace, where a Docker sandbox's child waits to be moved in.
func (d *Driver) observeChild(host *netlink.Handle, rec epRecord, parentIndex int) (netlink.Link, bool) {
	log := d.log.WithFields(logrus.Fields{"ep": rec.Key, "netns": rec.NetNSPath})
	if parentIndex == 0 {
		return nil, false
	}
	var h *netlink.Handle
	var ns netns.NsHandle
	var err error
	if core.IsSandboxNetNSID(rec.NetNSID) {
		waiting, err := d.hostChildren(host, rec.Key)
		if err != nil {
			log.WithError(err).Warn("cannot list the host's links")
			return nil, false
		}
		if len(waiting) > 0 {
			return waiting[0].link, len(waiting) == 1 && reusable(waiting[0], rec.Fingerprint, rec.Mode, parentIndex)
		}
		var gone bool
		if h, ns, gone, err = openSandbox(rec.NetNSPath); gone || err != nil {
			if err != nil {
				log.WithError(err).Debug("endpoint namespace unreachable")
			}
			return nil, false
		}
	} else {
		if !sameNS(rec.NetNSPath, rec.NetNSID) {
			return nil, false
		}
		if h, ns, err = nl.InNS(rec.NetNSPath); err != nil {
			log.WithError(err).Debug("endpoint namespace unreachable")
			return nil, false
		}
	}
	defer ns.Close()
	defer h.Close()
	kids, err := d.ourChildren(h, rec.Key)
	if err != nil || len(kids) == 0 {
		return nil, false
	}
	if core.IsSandboxNetNSID(rec.NetNSID) {
		// Docker renames, addresses and brings up a handed-off child after
		// moving it in: judging (and so repairing) that would race Docker.
		return kids[0].link, len(kids) == 1 && reusable(kids[0], rec.Fingerprint, rec.Mode, parentIndex)
	}
	// Two children: a crash interrupted a rebuild; Ensure keeps one.
	return kids[0].link, len(kids) == 1 && childSound(h, kids[0], rec, parentIndex)
}

// childSound reports whether link is the child rec describes: our alias with
// rec's fingerprint, an ipvlan in rec's mode on the parent, up, with rec's
// address.
func childSound(h *netlink.Handle, c child, rec epRecord, parentIndex int) bool {
	link := c.link
	iv, ok := link.(*netlink.IPVlan)
	if !ok || c.fp != rec.Fingerprint || iv.Mode != netlinkMode(rec.Mode) ||
		link.Attrs().ParentIndex != parentIndex || link.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := addrList(h, link)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ones, _ := a.Mask.Size(); a.IP.String() == rec.IP && ones == rec.Prefix {
			return true
		}
	}
	return false
}

// child is a link of ours with the fingerprint from its alias.
type child struct {
	link netlink.Link
	fp   string
}

// ourChildren lists the links in h's namespace marked as this agent's child
// of the endpoint key. Normally one; more only if a crash interrupted a rebuild.
func (d *Driver) ourChildren(h *netlink.Handle, key string) ([]child, error) {
	links, err := nl.LinkList(h)
	if err != nil {
		return nil, err
	}
	var out []child
	for _, l := range links {
		if f, ok := nl.ParseAlias(l.Attrs().Alias, d.kind, 2); ok && f[1] == key {
			out = append(out, child{link: l, fp: f[0]})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].link.Attrs().Index < out[j].link.Attrs().Index })
	return out, nil
}

// addrList lists link's IPv4 addresses, retrying an interrupted dump.
func addrList(h *netlink.Handle, link netlink.Link) ([]netlink.Addr, error) {
	var err error
	for i := 0; i < 5; i++ {
		var addrs []netlink.Addr
		addrs, err = h.AddrList(link, netlink.FAMILY_V4)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return addrs, err
		}
	}
	return nil, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
}
