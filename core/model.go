// Package core holds netplugin's model, validation, the driver interface and the
// pure reconcile step. It imports nothing of ours: every other package depends on it.
package core

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// DefaultTenant is used when a command names no tenant.
const DefaultTenant = "default"

// Encapsulations a network can use between hosts.
const (
	EncapVLAN  = "vlan"
	EncapVXLAN = "vxlan"
)

// Global is the cluster-wide configuration.
type Global struct {
	// VLANs and VXLANs are the ranges tags are allocated from, e.g. "1-4094" or "10-100,200-300".
	VLANs  string `json:"vlans"`
	VXLANs string `json:"vxlans"`
	// DefaultDriver is the driver of networks that name none.
	DefaultDriver string `json:"defaultDriver"`
	// DefaultTagType is the encapsulation of networks that name none: "vlan"
	// or "vxlan" (so that a plain network spans hosts over VXLAN).
	DefaultTagType string `json:"defaultTagType,omitempty"`
	// SubnetPool and SubnetLen are where a network with no -subnet gets its subnet from.
	SubnetPool string `json:"subnetPool"`
	SubnetLen  int    `json:"subnetLen"`
}

// DefaultGlobal is the configuration of a cluster nobody configured.
func DefaultGlobal() Global {
	return Global{VLANs: "1-4094", VXLANs: "1-16777215", DefaultDriver: "linuxbridge", DefaultTagType: EncapVLAN,
		SubnetPool: "10.100.0.0/16", SubnetLen: 24}
}

// TagType is the encapsulation of a network that asks for tagType: its own
// choice, else the cluster's default, else VLAN (a global stored before the
// default existed has none).
func (g Global) TagType(tagType string) string {
	switch {
	case tagType != "":
		return tagType
	case g.DefaultTagType != "":
		return g.DefaultTagType
	}
	return EncapVLAN
}

// Tenant groups networks; names of networks are unique within a tenant.
type Tenant struct {
	Name string `json:"name"`
}

// Network is one L2 segment with one subnet.
type Network struct {
	Tenant  string `json:"tenant"`
	Name    string `json:"name"`
	Driver  string `json:"driver"`
	Encap   string `json:"encap"`
	Tag     int    `json:"tag"`
	TagAuto bool   `json:"tagAuto,omitempty"` // the tag was picked by us, not the user
	Subnet  string `json:"subnet"`            // canonical CIDR, e.g. 10.11.1.0/24
	Gateway string `json:"gateway,omitempty"` // plain IP inside Subnet
	// Options are driver settings (parent interface, mode, ...).
	Options map[string]string `json:"options,omitempty"`
	// CreatedBy is "docker" for networks made by `docker network create`; they
	// are deleted with their last Docker network.
	CreatedBy string `json:"createdBy,omitempty"`
}

// Key is the network's identity: tenant/name.
func (n Network) Key() string { return n.Tenant + "/" + n.Name }

// HostBlockLen reports whether the network is routed per host — ipvlan in l3
// mode: no L2 between hosts, each host owns a block of the subnet and the other
// hosts route that block to its underlay address — and the blocks' prefix
// length: Options["host-prefix"], or 4 bits longer than the subnet (16 hosts),
// at most /28 unless the subnet itself is smaller.
func (n Network) HostBlockLen() (int, bool) {
	if n.Driver != "ipvlan" || n.Options["mode"] != "l3" {
		return 0, false
	}
	_, sn, err := net.ParseCIDR(n.Subnet)
	if err != nil {
		return 0, false
	}
	ones, _ := sn.Mask.Size()
	if v, err := strconv.Atoi(n.Options["host-prefix"]); err == nil && v >= ones && v <= 30 {
		return v, true
	}
	return max(min(ones+4, 28), ones), true // a block is never larger than the subnet
}

// Endpoint is one interface of one container on one network.
type Endpoint struct {
	Tenant  string `json:"tenant"`
	Network string `json:"network"`
	Name    string `json:"name"`
	IP      string `json:"ip"`  // plain IP inside the network's subnet
	MAC     string `json:"mac"` // locally administered unicast, unique
	Host    string `json:"host"`
	// ContainerName is what the user typed (name or short ID); ContainerID the full ID.
	ContainerName string `json:"containerName,omitempty"`
	// ContainerID (a Docker ID or name) or NetNS (a name under /var/run/netns or a
	// path) says where the endpoint is plugged in. Both empty: reserved, not attached.
	ContainerID string `json:"containerId,omitempty"`
	NetNS       string `json:"netns,omitempty"`
	// DockerEndpoint is the Docker endpoint ID of endpoints made through the
	// Docker plugin; their lifetime is Docker's to decide.
	DockerEndpoint string `json:"dockerEndpoint,omitempty"`
	// Group is the endpoint group (in the endpoint's tenant and network)
	// whose policies and profile apply to it; "" for none. Not part of the
	// fingerprint: changing it re-programs policy, never the link.
	Group string `json:"group,omitempty"`
}

// NetworkKey is the key of the endpoint's network.
func (e Endpoint) NetworkKey() string { return e.Tenant + "/" + e.Network }

// Key is the endpoint's identity: tenant/name. Endpoint names are unique within a
// tenant because the seed grammar names an endpoint without its network
// (`netdcli -oper attach -construct endpoint ... NAME`).
func (e Endpoint) Key() string { return e.Tenant + "/" + e.Name }

// Attached reports whether the endpoint is meant to be plugged into something.
func (e Endpoint) Attached() bool { return e.ContainerID != "" || e.NetNS != "" }

// Endpoint states reported by agents.
const (
	StateUp       = "up"
	StatePending  = "pending"
	StateError    = "error"
	StateDetached = "detached"
)

// EndpointStatus is what an agent observed for one endpoint on its host.
type EndpointStatus struct {
	Host    string `json:"host"`
	State   string `json:"state"`
	Error   string `json:"error,omitempty"`
	IfName  string `json:"ifName,omitempty"`  // host-side link
	IfIndex int    `json:"ifIndex,omitempty"` // host-side link
	NetNS   string `json:"netns,omitempty"`   // resolved namespace path
	// Note says how the network is programmed on this host when that is less
	// than asked for but not an error, e.g. "host-local: no --uplink on host h1".
	Note string `json:"note,omitempty"`
}

// HostInfo is what an agent publishes about itself under its lease.
type HostInfo struct {
	Name    string   `json:"name"`
	VTEP    string   `json:"vtep,omitempty"`
	Drivers []string `json:"drivers"`
	Started string   `json:"started"`
}

// ParseCIDR returns the canonical subnet of s, refusing host bits so that a typo
// like 10.1.1.5/24 is an error rather than a silent rewrite.
func ParseCIDR(s string) (*net.IPNet, error) {
	ip, n, err := net.ParseCIDR(s)
	if err != nil || ip.To4() == nil {
		return nil, fmt.Errorf("%w: invalid subnet %q (want an IPv4 CIDR like 10.1.1.0/24)", ErrInvalid, s)
	}
	if !ip.Equal(n.IP) {
		return nil, fmt.Errorf("%w: invalid subnet %q: host bits set (did you mean %s?)", ErrInvalid, s, n)
	}
	return n, nil
}

// ParseIPv4 parses a plain dotted IPv4 address.
func ParseIPv4(s string) (net.IP, error) {
	ip := net.ParseIP(strings.TrimSpace(s)).To4()
	if ip == nil {
		return nil, fmt.Errorf("%w: invalid IP address %q", ErrInvalid, s)
	}
	return ip, nil
}
