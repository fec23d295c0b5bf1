// Package hostnic is the driver that gives a container an existing host NIC: on
// Ensure the NIC moves into the container's namespace (renamed to the lowest
// free ethN, given the endpoint's address and gateway route), on Remove it comes
// back to the host with its original name, MAC, MTU, addresses, alias and
// up/down state. The NIC is the network: no bridge, no tunnel.
//
// Choosing the NIC, in this order:
//
//	-opt nic=IFNAME       network option: the NIC with this name on each host
//	-opt mac=MAC          network option: the NIC with this MAC
//	netdcli endpoint -mac the endpoint's MAC (as the seed's docker --mac-address)
//
// The NIC keeps its own MAC: with nic= or mac= the endpoint's MAC is ignored;
// without them it is what selects the NIC, so it must match. A NIC that carries
// the host's default route, is a port of a bridge or bond, or has VLAN/macvlan
// devices on top, is refused (core.ErrInUse) unless the network says
// -opt force=true; loopback and netplugin's own links are always refused.
//
// Ownership and recovery. Before the NIC is touched the driver records the
// binding in Config.StateDir (JSON, written atomically): endpoint, namespace path
// and ID, the NIC's MAC and its original name, addresses, MTU, alias and
// up/down state. Then the NIC gets the alias
// netplugin:hnic:<fingerprint>:<original name>:<tenant/endpoint>, which moves
// with it into the container and back. So RemoveEndpoint needs only the key that
// Observe reported, also from a new Driver after a crash; and even with the
// state dir lost, a NIC of ours found on the host still says what it was called.
//
// What happens on container exit. When a namespace is destroyed the kernel
// deletes the virtual devices in it (veth, macvlan, ...) and moves physical NICs
// back to the initial namespace, asynchronously, under their in-container name
// (or "dev<ifindex>" when that name is taken there). So a NIC of ours can
// appear on the host named eth0, without addresses. Observe, Ensure and Remove
// first give every such NIC back properly (original name, addresses, state);
// the endpoint is then reported unhealthy, and the agent binds it again (the
// container was restarted) or removes it. RemoveEndpoint of an endpoint whose
// namespace is gone waits up to Config.ReturnWait for the NIC to come back;
// if it does not, the binding is kept as detached so that the NIC is still
// restored when it shows up later (detached bindings are forgotten after a day:
// a veth deleted with its namespace never comes back). An agent that is not
// in the initial namespace never sees a physical NIC come back.
package hostnic

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
	"github.com/netplugin/netplugin/internal/recstore"
)

// Name is the driver's name in network specs.
const Name = "hostnic"

// Network option keys.
const (
	OptNIC   = "nic"
	OptMAC   = "mac"
	OptForce = "force"
)

// kindNIC is the alias kind of a bound NIC,
// netplugin:hnic@<host>:<fingerprint>:<original name>:<tenant/ep> — qualified by
// the agent's host label (Config.Host) so that agents sharing a kernel never
// take each other's NICs back; without a host label just "hnic".
const kindNIC = "hnic"

// Defaults.
const (
	defaultReturnWait = 3 * time.Second
	// forgetAfter drops a detached binding whose NIC never came back (a veth or
	// a NIC unplugged while in the container).
	forgetAfter = 24 * time.Hour
)

// Config is the driver's host-local setup.
type Config struct {
	// StateDir holds the bindings (required), e.g. /var/lib/netplugin/hostnic.
	StateDir string
	// NetNS is the namespace file of the host namespace; "" means the agent's
	// own. It lets one process act as several hosts (tests, local clusters).
	NetNS string
	// Host is the agent's host label; it qualifies the ownership mark.
	Host string
	// ReturnWait is how long RemoveEndpoint waits for a NIC to come back from a
	// destroyed namespace (the kernel returns it asynchronously); 0 means 3 s.
	ReturnWait time.Duration
}

// Driver moves host NICs into containers and back.
type Driver struct {
	log        *logrus.Entry
	host       *netlink.Handle
	hostNS     netns.NsHandle // where NICs are given back to
	nets       recstore.Dir
	eps        recstore.Dir
	returnWait time.Duration
	kind       string // alias kind of our NICs, see kindNIC
	// mu serialises everything: moves of NICs are rare, and every operation
	// first gives stray NICs back and checks bindings against each other.
	mu sync.Mutex
	// names serialises picking and taking an ethN per container namespace
	// (also under mu today; the naming stays safe should mu ever narrow).
	names nl.Locks
}

var (
	_ core.Driver  = (*Driver)(nil)
	_ core.HandOff = (*Driver)(nil)
)

// New returns the driver; Close releases its namespace handle and sockets.
func New(log *logrus.Entry, cfg Config) (*Driver, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: hostnic driver needs a state dir", core.ErrInvalid)
	}
	nets, err := recstore.Open(filepath.Join(cfg.StateDir, "networks"))
	if err != nil {
		return nil, err
	}
	eps, err := recstore.Open(filepath.Join(cfg.StateDir, "endpoints"))
	if err != nil {
		return nil, err
	}
	d := &Driver{log: log.WithField("driver", Name), nets: nets, eps: eps, returnWait: cfg.ReturnWait, kind: kindNIC}
	if cfg.Host != "" {
		d.kind = kindNIC + "@" + strings.ReplaceAll(cfg.Host, ":", "_")
	}
	if d.returnWait <= 0 {
		d.returnWait = defaultReturnWait
	}
	if cfg.NetNS == "" {
		if d.hostNS, err = netns.Get(); err != nil {
			return nil, fmt.Errorf("open own netns: %w", err)
		}
		if d.host, err = netlink.NewHandle(); err != nil {
			d.hostNS.Close()
			return nil, fmt.Errorf("netlink: %w", err)
		}
		return d, nil
	}
	if d.host, d.hostNS, err = nl.InNS(cfg.NetNS); err != nil {
		return nil, err
	}
	return d, nil
}

// Close releases the driver's namespace handle and netlink sockets.
func (d *Driver) Close() error {
	d.host.Close()
	return d.hostNS.Close()
}

// Name implements core.Driver.
func (d *Driver) Name() string { return Name }

// selector says which NIC a network's endpoints get.
type selector struct {
	name  string
	mac   string // canonical lower-case form
	force bool
}

func (s selector) String() string {
	if s.name != "" {
		return "NIC " + s.name
	}
	return "NIC with MAC " + s.mac
}

// parseOptions validates a network's options strictly; a typo must not make the
// driver take a different NIC than meant.
func parseOptions(n core.Network) (selector, error) {
	var s selector
	for k, v := range n.Options {
		switch k {
		case OptNIC:
			if v == "" || len(v) > 15 || strings.ContainsAny(v, "/: \t") {
				return s, fmt.Errorf("%w: option %s=%q is not an interface name", core.ErrInvalid, OptNIC, v)
			}
			s.name = v
		case OptMAC:
			mac, err := parseMAC(v)
			if err != nil {
				return s, fmt.Errorf("option %s: %w", OptMAC, err)
			}
			s.mac = mac
		case OptForce:
			switch v {
			case "true":
				s.force = true
			case "false", "":
			default:
				return s, fmt.Errorf("%w: option %s=%q: want true or false", core.ErrInvalid, OptForce, v)
			}
		default:
			return s, fmt.Errorf("%w: unknown option %q for driver %s (have %s, %s, %s)", core.ErrInvalid, k, Name, OptNIC, OptMAC, OptForce)
		}
	}
	if s.name != "" && s.mac != "" {
		return s, fmt.Errorf("%w: options %s and %s both given: choose the NIC one way", core.ErrInvalid, OptNIC, OptMAC)
	}
	return s, nil
}

// endpointSelector is the network's selector, or the endpoint's MAC.
func endpointSelector(ep core.EndpointSpec) (selector, error) {
	s, err := parseOptions(ep.Net.Network)
	if err != nil || s.name != "" || s.mac != "" {
		return s, err
	}
	if ep.MAC == "" {
		return s, fmt.Errorf("%w: driver %s picks the NIC by the network's -opt %s=/%s= or the endpoint's -mac; none given",
			core.ErrInvalid, Name, OptNIC, OptMAC)
	}
	s.mac, err = parseMAC(ep.MAC)
	return s, err
}

func parseMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%w: MAC %q", core.ErrInvalid, s)
	}
	return hw.String(), nil
}

// netRecord remembers an ensured network, so that Observe reports it and the
// agent does not ensure it on every pass.
type netRecord struct {
	Key         string `json:"key"`
	Fingerprint string `json:"fingerprint"`
}

// EnsureNetwork validates the options and, when the network names its NIC,
// checks that the NIC exists here (on the host or bound by us) and may be taken.
func (d *Driver) EnsureNetwork(ctx context.Context, n core.NetworkSpec) error {
	sel, err := parseOptions(n.Network)
	if err != nil {
		return fmt.Errorf("network %s: %w", n.Key(), err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if sel.name != "" || sel.mac != "" {
		bound, err := d.boundTo(sel, "")
		if err != nil {
			return err
		}
		if bound == "" {
			link, err := d.find(sel)
			if err != nil {
				return fmt.Errorf("network %s: %w", n.Key(), err)
			}
			if err := d.mayTake(link, sel); err != nil {
				return fmt.Errorf("network %s: %w", n.Key(), err)
			}
		}
	}
	return d.nets.Put(n.Key(), netRecord{Key: n.Key(), Fingerprint: n.Fingerprint()})
}

// RemoveNetwork forgets the network; NICs come back with their endpoints.
func (d *Driver) RemoveNetwork(ctx context.Context, o core.ObservedNetwork) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.nets.Del(o.Key)
}

// Observe first gives back NICs of ours that turned up on the host, then
// reports the recorded networks and the bound endpoints.
func (d *Driver) Observe(ctx context.Context) (core.Actual, error) {
	a := core.Actual{Networks: map[string]core.ObservedNetwork{}, Endpoints: map[string]core.ObservedEndpoint{}}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.giveBackStrays()
	nets, bad, err := recstore.List[netRecord](d.nets)
	if err != nil {
		return a, err
	}
	d.logBad(bad)
	for _, r := range nets {
		a.Networks[r.Key] = core.ObservedNetwork{Key: r.Key, Fingerprint: r.Fingerprint}
	}
	bs, bad, err := recstore.List[binding](d.eps)
	if err != nil {
		return a, err
	}
	d.logBad(bad)
	for _, b := range bs {
		if !b.Detached.IsZero() {
			if time.Since(b.Detached) > forgetAfter {
				d.log.WithFields(logrus.Fields{"ep": b.Key, "nic": b.Orig.Name, "mac": b.MAC}).Warn("NIC never came back; forgetting it")
				_ = d.eps.Del(b.Key)
			}
			continue // removed as far as the agent is concerned
		}
		a.Endpoints[b.Key] = d.inspect(b)
	}
	return a, nil
}

func (d *Driver) logBad(bad []error) {
	for _, err := range bad {
		d.log.WithError(err).Error("unreadable record skipped; remove or fix it by hand")
	}
}
