// Package macvlan is the driver that plugs each endpoint in as a macvlan child of
// a host interface (the network's "parent", an uplink), so containers sit
// directly on the parent's L2 segment with their own MAC: no bridge, no NAT, and
// hosts reach each other through whatever switch the parents are cabled to.
//
// Network options (netdcli -opt KEY=VALUE):
//
//	parent=IFNAME   required: the host interface the children hang off
//	mode=MODE       bridge (default) | private | vepa | passthru
//	vlan=ID         1-4094: use the parent's 802.1Q subinterface IFNAME.ID,
//	                created and owned by netplugin, deleted with the last network
//	                on it (an operator's own IFNAME.ID is used as it is and never
//	                deleted). Named npv<10 hex> when IFNAME.ID would not fit
//	                in 15 bytes. Needs a kernel with CONFIG_VLAN_8021Q.
//
// The network's -tag/-tag-type are not used by this driver: a macvlan network is
// the parent's segment, tagged only when vlan= says so.
//
// The host cannot reach its own macvlan children, by design of the kernel: a
// frame the parent sends is put on the wire, never looped back to a child, and a
// child's frames addressed to the parent's MAC are not delivered to the parent.
// Containers reach each other (mode bridge), other hosts and the gateway on the
// wire; a host that must talk to its containers needs a macvlan child of its own
// on the same parent, or a route through the external gateway.
//
// Only one mode per parent: the kernel would accept bridge, private and vepa
// children side by side, but each child then follows its own mode and the result
// (a bridge child reaching some neighbours and not others) is not what anyone
// asked for. Two networks on one parent with different modes are refused with
// core.ErrInUse; passthru, which the kernel allows only as the sole child of a
// parent (and which gives the child the parent's MAC, so the endpoint's MAC is
// not used), is refused next to any other network.
//
// Ownership and recovery. A child lives inside its container, so the host
// namespace cannot list it. The driver therefore keeps one record per network
// and per endpoint in Config.StateDir (JSON, written atomically). An endpoint's
// record (its namespace path and ID, lower device, mode, MAC, address) is written
// before the child is created, so a crash leaves a record with no child (repaired
// by the next Ensure), never a child nobody knows about. The child itself carries
// the alias netplugin:mvep:<fingerprint>:<tenant/endpoint>, and Observe trusts
// only a child whose alias names the record's endpoint: a new Driver on the same
// state dir after a crash observes the same children, healthy, and Ensure keeps
// them (same ifindex). The kernel ignores an alias given at creation, so a child
// is created as npm<10 hex of the endpoint> and renamed to ethN once marked: a
// crash in between leaves a child still recognisably the endpoint's, which the
// next Ensure replaces. A child is judged against the network's current record:
// after a change of parent, mode or vlan= its endpoints are observed unhealthy
// and rebuilt. ObservedEndpoint.IfName/IfIndex are the container-side name and
// index: there is no host-side link (but for a child handed off to Docker, which
// waits in the host namespace until Docker moves it: see handoff.go).
package macvlan

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/recstore"
)

// Name is the driver's name in network specs.
const Name = "macvlan"

// Network option keys.
const (
	OptParent = "parent"
	OptMode   = "mode"
	OptVLAN   = "vlan"
)

// Macvlan modes, as the kernel and `ip link` name them.
const (
	ModeBridge   = "bridge"
	ModePrivate  = "private"
	ModeVEPA     = "vepa"
	ModePassthru = "passthru"
)

// Alias kinds of the links this driver owns.
const (
	kindEP   = "mvep"   // child in the container: netplugin:mvep:<fingerprint>:<tenant/ep>
	kindVLAN = "mvvlan" // 802.1Q subinterface:    netplugin:mvvlan:<parent>:<vlan id>
)

// maxIfName is the longest interface name Linux accepts (IFNAMSIZ - 1).
const maxIfName = 15

// Config is the driver's host-local setup.
type Config struct {
	// StateDir holds the driver's records (required), e.g. /var/lib/netplugin/macvlan.
	StateDir string
	// NetNS is the namespace file of the host namespace to program; "" means the
	// agent's own. It lets one process act as several hosts (tests, the local
	// multi-host cluster in namespaces).
	NetNS string
}

// Driver programs macvlan children of host interfaces.
type Driver struct {
	log  *logrus.Entry
	host *netlink.Handle // the host namespace; its sockets stay bound to it
	nets recstore.Dir
	eps  recstore.Dir
	// mu serialises network changes: the mode check reads every network record
	// and the subinterface clean-up must not race a network being ensured.
	mu sync.Mutex
	// names serialises picking and creating an ethN per container namespace.
	names nl.Locks
}

var (
	_ core.Driver  = (*Driver)(nil)
	_ core.HandOff = (*Driver)(nil)
)

// New returns the driver; Close releases its netlink sockets.
func New(log *logrus.Entry, cfg Config) (*Driver, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: macvlan driver needs a state dir", core.ErrInvalid)
	}
	nets, err := recstore.Open(filepath.Join(cfg.StateDir, "networks"))
	if err != nil {
		return nil, err
	}
	eps, err := recstore.Open(filepath.Join(cfg.StateDir, "endpoints"))
	if err != nil {
		return nil, err
	}
	d := &Driver{log: log.WithField("driver", Name), nets: nets, eps: eps}
	if cfg.NetNS == "" {
		d.host, err = netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		return d, nil
	}
	h, ns, err := nl.InNS(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	ns.Close() // the handle's sockets keep the namespace
	d.host = h
	return d, nil
}

// Close releases the driver's netlink sockets.
func (d *Driver) Close() error {
	d.host.Close()
	return nil
}

// Name implements core.Driver.
func (d *Driver) Name() string { return Name }

// netOpts are a network's parsed options.
type netOpts struct {
	parent string
	mode   string
	vlan   int // 0: none
}

// kernelMode maps a mode name to the kernel's constant.
func kernelMode(mode string) (netlink.MacvlanMode, bool) {
	switch mode {
	case ModeBridge:
		return netlink.MACVLAN_MODE_BRIDGE, true
	case ModePrivate:
		return netlink.MACVLAN_MODE_PRIVATE, true
	case ModeVEPA:
		return netlink.MACVLAN_MODE_VEPA, true
	case ModePassthru:
		return netlink.MACVLAN_MODE_PASSTHRU, true
	}
	return 0, false
}

// parseOptions validates a network's options strictly: a typo in a key must be
// an error, not a silently ignored setting.
func parseOptions(n core.Network) (netOpts, error) {
	o := netOpts{mode: ModeBridge}
	for k, v := range n.Options {
		switch k {
		case OptParent:
			o.parent = v
		case OptMode:
			o.mode = v
		case OptVLAN:
			id, err := strconv.Atoi(v)
			if err != nil || id < 1 || id > core.MaxVLAN {
				return o, fmt.Errorf("%w: option %s=%q: want a VLAN ID 1-%d", core.ErrInvalid, OptVLAN, v, core.MaxVLAN)
			}
			o.vlan = id
		default:
			return o, fmt.Errorf("%w: unknown option %q for driver %s (have %s, %s, %s)", core.ErrInvalid, k, Name, OptParent, OptMode, OptVLAN)
		}
	}
	if o.parent == "" {
		return o, fmt.Errorf("%w: driver %s needs -opt %s=<host interface>", core.ErrInvalid, Name, OptParent)
	}
	if len(o.parent) > maxIfName || strings.ContainsAny(o.parent, "/: \t") {
		return o, fmt.Errorf("%w: option %s=%q is not an interface name", core.ErrInvalid, OptParent, o.parent)
	}
	if _, ok := kernelMode(o.mode); !ok {
		return o, fmt.Errorf("%w: option %s=%q: want %s, %s, %s or %s", core.ErrInvalid, OptMode, o.mode,
			ModeBridge, ModePrivate, ModeVEPA, ModePassthru)
	}
	return o, nil
}

// lower is the device the children hang off: the parent, or its 802.1Q
// subinterface "<parent>.<id>" (hashed when that would not fit in 15 bytes).
func (o netOpts) lower() string {
	if o.vlan == 0 {
		return o.parent
	}
	return nl.VLANName(o.parent, o.vlan)
}

// netRecord is what the driver remembers about a network it ensured.
type netRecord struct {
	Key         string `json:"key"`
	Fingerprint string `json:"fingerprint"`
	Parent      string `json:"parent"`
	Mode        string `json:"mode"`
	VLAN        int    `json:"vlan,omitempty"`
	Lower       string `json:"lower"`
}

// EnsureNetwork checks the parent and the mode against the other networks on it,
// creates the VLAN subinterface if one is asked for, and records the network.
// A refused network changes nothing.
func (d *Driver) EnsureNetwork(ctx context.Context, n core.NetworkSpec) error {
	o, err := parseOptions(n.Network)
	if err != nil {
		return fmt.Errorf("network %s: %w", n.Key(), err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	parent, err := d.host.LinkByName(o.parent)
	if nl.IsNotFound(err) {
		return fmt.Errorf("network %s: %w: parent interface %s does not exist on this host", n.Key(), core.ErrNotFound, o.parent)
	}
	if err != nil {
		return fmt.Errorf("network %s: look up parent %s: %w", n.Key(), o.parent, err)
	}
	if parent.Attrs().Flags&net.FlagLoopback != 0 {
		return fmt.Errorf("network %s: %w: parent %s is a loopback interface", n.Key(), core.ErrInvalid, o.parent)
	}
	if err := d.checkModes(n.Key(), o); err != nil {
		return fmt.Errorf("network %s: %w", n.Key(), err)
	}
	lower := parent
	if o.vlan != 0 {
		if lower, err = d.ensureVLAN(parent, o); err != nil {
			return fmt.Errorf("network %s: %w", n.Key(), err)
		}
	}
	rec := netRecord{Key: n.Key(), Fingerprint: n.Fingerprint(), Parent: o.parent, Mode: o.mode, VLAN: o.vlan, Lower: o.lower()}
	if err := d.nets.Put(n.Key(), rec); err != nil {
		return err
	}
	// The network may have moved off a subinterface of ours (vlan= changed).
	if err := d.gcVLANs(); err != nil {
		d.log.WithError(err).Warn("clean up unused VLAN subinterfaces; will retry")
	}
	log := d.log.WithFields(logrus.Fields{"net": n.Key(), "lower": rec.Lower, "mode": o.mode})
	for _, l := range []netlink.Link{parent, lower} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			// netplugin never changes an uplink it does not own.
			log.WithField("link", l.Attrs().Name).Warn("link is down: the network's endpoints get no traffic until an operator sets it up")
			break
		}
	}
	log.Debug("network ensured")
	return nil
}

// checkModes refuses a network whose mode differs from another network on the
// same lower device, and any second network on a passthru one.
func (d *Driver) checkModes(key string, o netOpts) error {
	recs, bad, err := recstore.List[netRecord](d.nets)
	if err != nil {
		return err
	}
	d.logBad(bad)
	for _, r := range recs {
		if r.Key == key || r.Lower != o.lower() {
			continue
		}
		if r.Mode != o.mode || o.mode == ModePassthru {
			hint := ""
			if r.Mode == ModePassthru || o.mode == ModePassthru {
				hint = " (a passthru parent serves a single network)"
			}
			return fmt.Errorf("%w: parent %s already used by network %s in mode %s%s", core.ErrInUse, o.lower(), r.Key, r.Mode, hint)
		}
	}
	return nil
}

// RemoveNetwork forgets the network and deletes a VLAN subinterface of ours
// that nothing uses any more. The parent is never touched.
func (d *Driver) RemoveNetwork(ctx context.Context, o core.ObservedNetwork) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.nets.Del(o.Key); err != nil {
		return err
	}
	return d.gcVLANs()
}

// Observe reports the recorded networks and endpoints. A network whose lower
// device is missing is reported with no fingerprint, so that the next pass
// ensures it again and the error (parent gone) reaches the user's status.
func (d *Driver) Observe(ctx context.Context) (core.Actual, error) {
	a := core.Actual{Networks: map[string]core.ObservedNetwork{}, Endpoints: map[string]core.ObservedEndpoint{}}
	links, err := nl.LinkList(d.host)
	if err != nil {
		return a, err
	}
	hostLinks := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		hostLinks[l.Attrs().Name] = l
	}
	handOffIdx := indexHandedOff(links)
	nets, bad, err := recstore.List[netRecord](d.nets)
	if err != nil {
		return a, err
	}
	d.logBad(bad)
	netByKey := map[string]netRecord{}
	for _, r := range nets {
		netByKey[r.Key] = r
		fp := r.Fingerprint
		if _, ok := hostLinks[r.Lower]; !ok {
			fp = ""
		}
		a.Networks[r.Key] = core.ObservedNetwork{Key: r.Key, Fingerprint: fp}
	}
	eps, bad, err := recstore.List[epRecord](d.eps)
	if err != nil {
		return a, err
	}
	d.logBad(bad)
	for _, r := range eps {
		// Judge the child against the network as it is now: a changed parent or
		// mode does not change the endpoint's fingerprint, only its health.
		want := r
		if n, ok := netByKey[r.Network]; ok {
			want.Lower, want.Mode = n.Lower, n.Mode
		}
		var waiting []nl.OwnedLink
		if core.IsSandboxNetNSID(r.NetNSID) {
			waiting = handedOff(handOffIdx, hostLinks, r.Key)
		}
		a.Endpoints[r.Key] = d.inspect(want, hostLinks[want.Lower], waiting)
	}
	return a, nil
}

func (d *Driver) logBad(bad []error) {
	for _, err := range bad {
		d.log.WithError(err).Error("unreadable record skipped; remove or fix it by hand")
	}
}
