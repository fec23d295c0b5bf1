// Package state is netplugin's store in etcd v3: the key layout, every read
// and write of desired state (tenants, networks, endpoints, the -cfg planner
// and its journal), the one IP allocator, the Docker mapping, host sessions
// with their status, and each agent's scoped mirror.
//
// # Layout
//
// Canonical objects live under config/, allocations under alloc/ (one key per
// tag and per address, taken with CreateRevision == 0). Index keys under
// index/ are copies written in the same transaction as the objects they
// index, so they never disagree with them:
//
//	config/endpoints/<t>/<e>         the endpoint
//	index/host/<h>/ep/<t>/<e>        the same endpoint, under the host it is homed on
//	index/net/<t>/<n>/<e>            the same endpoint, under its network
//	index/host/<h>/res/<t>/<n>/<ip>  a Docker IPAM reservation of host h (pending or held)
//	alloc/ip/<t>/<n>/<ip>            who owns an address
//	alloc/ipfull/<t>/<n>             which /24 blocks of a larger subnet are full (a hint)
//	alloc/block/<t>/<n>/<base>       a host's block of a routed network
//
// Policy objects (config/policies/, config/profiles/, config/groups/), group
// membership (index/group/<t>/<g>/<e>) and references (index/uses/) are laid
// out in policy.go.
//
// Under a host's lease, written by its agent: hosts/<h> (the host record),
// nethosts/<t>/<n>/<h> (h serves network n: its VTEP and drivers, what the
// other hosts of n need to reach it), status/<t>/<e>/<h> (what h observed
// of endpoint t/e) and policystatus/<h> (the policy generation h enforces).
//
// # Scoped fan-out
//
// An agent watches index/host/<itself>/ep/ and, for each network it has
// endpoints on, the network's key, index/net/<t>/<n>/, nethosts/<t>/<n>/ and
// alloc/block/<t>/<n>/, and the policy ranges its endpoints' groups need
// (see HostView and viewpolicy.go). A write of one endpoint therefore
// reaches its own host once and each host of its network once, never a host
// that does not serve the network. Periodic jobs read only their host's
// index (HostEndpoints, HostReservations); reads of one object read O(1)
// keys; listings page through etcd.
package state

import (
	"strconv"
	"strings"
)

// Prefix is the root of every key; the version lets a later layout live beside this one.
const Prefix = "/netplugin/v1/"

const (
	configPrefix    = Prefix + "config/"
	keyGlobal       = configPrefix + "global"
	tenantPrefix    = configPrefix + "tenants/"
	networkPrefix   = configPrefix + "networks/"
	endpointPrefix  = configPrefix + "endpoints/"
	allocPrefix     = Prefix + "alloc/"
	ipAllocPrefix   = allocPrefix + "ip/"
	ipFullPrefix    = allocPrefix + "ipfull/"
	indexPrefix     = Prefix + "index/"
	hostIndexPrefix = indexPrefix + "host/"
	netIndexPrefix  = indexPrefix + "net/"
	hostPrefix      = Prefix + "hosts/"
	netHostsPrefix  = Prefix + "nethosts/"
	statusPrefix    = Prefix + "status/"
)

func tenantKey(t string) string      { return tenantPrefix + t }
func networkKey(t, n string) string  { return networkPrefix + t + "/" + n }
func networksOf(t string) string     { return networkPrefix + t + "/" }
func endpointKey(t, e string) string { return endpointPrefix + t + "/" + e }
func endpointsOf(t string) string    { return endpointPrefix + t + "/" }

// tagKey: tags are global, not per tenant, because every tenant's VLANs share one trunk.
func tagKey(encap string, tag int) string { return allocPrefix + encap + "/" + strconv.Itoa(tag) }
func tagsOf(encap string) string          { return allocPrefix + encap + "/" }

// ipKey doubles as the index of a network's endpoints: a network with no key under
// ipsOf has no endpoints, which a transaction can compare.
func ipKey(t, n, ip string) string { return ipAllocPrefix + t + "/" + n + "/" + ip }
func ipsOf(t, n string) string     { return ipAllocPrefix + t + "/" + n + "/" }
func ipFullKey(t, n string) string { return ipFullPrefix + t + "/" + n }
func hostKey(h string) string      { return hostPrefix + h }

func hostEndpointKey(h, t, e string) string { return hostEndpointsOf(h) + t + "/" + e }
func hostEndpointsOf(h string) string       { return hostIndexPrefix + h + "/ep/" }
func hostReservationsOf(h string) string    { return hostIndexPrefix + h + "/res/" }
func hostNetReservationsOf(h, t, n string) string {
	return hostReservationsOf(h) + t + "/" + n + "/"
}
func hostReservationKey(h, t, n, ip string) string { return hostNetReservationsOf(h, t, n) + ip }
func netEndpointKey(t, n, e string) string         { return netEndpointsOf(t, n) + e }
func netEndpointsOf(t, n string) string            { return netIndexPrefix + t + "/" + n + "/" }
func netHostKey(t, n, h string) string             { return netHostsOf(t, n) + h }
func netHostsOf(t, n string) string                { return netHostsPrefix + t + "/" + n + "/" }
func statusKey(epKey, host string) string          { return statusOf(epKey) + host }
func statusOf(epKey string) string                 { return statusPrefix + epKey + "/" }

// lastSegment returns what follows the final '/'.
func lastSegment(k string) string { return k[strings.LastIndexByte(k, '/')+1:] }
