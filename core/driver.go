package core

import (
	"context"
	"strings"
)

// NetworkSpec is everything a driver needs to program one network on a host.
type NetworkSpec struct {
	Network
}

// EndpointSpec is everything a driver needs to plug one endpoint in. The agent
// resolves the container to a namespace before calling the driver, so drivers
// never talk to Docker or the store.
type EndpointSpec struct {
	Endpoint
	Net NetworkSpec
	// NetNSPath is the namespace to plug into; NetNSID identifies it (device and
	// inode of the nsfs file) so that a container restarted into a new namespace
	// is told apart from the old one.
	NetNSPath string
	NetNSID   string
}

// Fingerprint summarises what, if changed, means the endpoint must be rebuilt.
func (s EndpointSpec) Fingerprint() string {
	return Short(s.IP + "|" + s.MAC + "|" + s.Net.Subnet + "|" + s.Net.Gateway + "|" + s.NetNSID + "|" +
		s.Net.Driver + "|" + s.Net.Key())
}

// Fingerprint summarises the network settings a driver programs.
func (s NetworkSpec) Fingerprint() string {
	return Short(s.Driver + "|" + s.Subnet + "|" + s.Gateway + "|" + s.Encap + "|" + itoa(s.Tag) + "|" + mapString(s.Options))
}

// ObservedNetwork is a network object found on the host, marked as ours.
type ObservedNetwork struct {
	Key         string // tenant/name
	Fingerprint string
}

// ObservedEndpoint is an endpoint link found on the host, marked as ours.
type ObservedEndpoint struct {
	Key         string // tenant/name
	Fingerprint string
	IfName      string
	IfIndex     int
	Healthy     bool // up and on the right bridge/port
}

// Actual is what a driver found programmed on this host.
type Actual struct {
	Networks  map[string]ObservedNetwork
	Endpoints map[string]ObservedEndpoint
}

// Driver programs one host's dataplane. Every method is idempotent: Ensure*
// converges whether or not the object exists; Remove* of an absent object is nil.
// Remove gets only what Observe reported, because after a crash that is all there is.
type Driver interface {
	Name() string
	EnsureNetwork(ctx context.Context, n NetworkSpec) error
	RemoveNetwork(ctx context.Context, n ObservedNetwork) error
	EnsureEndpoint(ctx context.Context, ep EndpointSpec) (ObservedEndpoint, error)
	RemoveEndpoint(ctx context.Context, ep ObservedEndpoint) error
	// Observe lists what this driver has programmed (only objects marked as ours).
	Observe(ctx context.Context) (Actual, error)
}

// Peer is another host as its agent published it.
type Peer struct {
	Name string
	VTEP string // underlay address for tunnels and routes; "" if the host has none
}

// Remote is an endpoint of a network on another host: where a driver that
// spans hosts forwards frames for its MAC and answers ARP for its IP.
type Remote struct {
	MAC  string
	IP   string
	Host string
	VTEP string // the underlay address of Host
}

// NetRemotes is what lies beyond this host for one network that has
// endpoints here: the attached endpoints on other hosts, and those hosts
// (each once, sorted by name), which receive the network's broadcast,
// multicast and unknown-unicast frames. Only hosts that run the network's
// driver and publish a VTEP count; a host whose lease went is kept for the
// agent's host grace period, so that an agent restart costs no packet.
type NetRemotes struct {
	Endpoints []Remote
	Hosts     []Peer
}

// Forwarder is implemented by drivers that join hosts with forwarding state of
// their own (VXLAN FDB and neighbour entries, unicast flows, tunnels). The
// agent calls SetRemotes after every sync of the driver's networks, keyed by
// network (tenant/name), with every network of this driver that has endpoints
// on this host, also those with nothing remote (their entries must go).
// Networks not in the map have no endpoints here any more.
type Forwarder interface {
	SetRemotes(ctx context.Context, remotes map[string]NetRemotes) error
}

// Noter is implemented by drivers that program some networks in a reduced way
// on this host without that being an error (a VLAN network with no uplink
// stays local to the host). The agent puts the note in the status of the
// network's endpoints, so that `netdcli get` says so.
type Noter interface {
	NetworkNote(n NetworkSpec) string
}

// HandOff is implemented by drivers that can leave an endpoint's container-side
// link in the host namespace for a runtime that moves it into the sandbox itself
// (Docker's Join returns a link name; Docker moves, renames and addresses it).
// The host side is programmed and marked exactly as EnsureEndpoint would, so the
// agent later observes the endpoint as healthy and leaves it alone.
type HandOff interface {
	PrepareHandOff(ctx context.Context, ep EndpointSpec) (ifName string, err error)
}

// SandboxNetNSID identifies a Docker sandbox by its key path: Docker calls Join
// before the sandbox's namespace exists (it is bound there when the container
// starts), so its inode cannot be the identity, and the path is unique per sandbox.
func SandboxNetNSID(path string) string { return "sandbox:" + path }

// IsSandboxNetNSID reports whether a namespace ID names a Docker sandbox by its
// path (SandboxNetNSID) rather than a namespace by device and inode.
func IsSandboxNetNSID(id string) bool { return strings.HasPrefix(id, SandboxNetNSID("")) }

// HandOffIfName is the temporary host-namespace name of a handed-off link.
func HandOffIfName(epKey string) string { return "nq" + Short(epKey) }
