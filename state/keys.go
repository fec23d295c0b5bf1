// Package state is netplugin's store: etcd v3 keys, transactional allocation of
// tags, subnets and IPs, list+watch, per-host status under leases, and the
// embedded etcd a single host runs without any setup.
package state

import (
	"strconv"
	"strings"
)

// Prefix is the root of every key; the version lets a later layout live beside this one.
const Prefix = "/netplugin/v1/"

const (
	configPrefix   = Prefix + "config/"
	keyGlobal      = configPrefix + "global"
	tenantPrefix   = configPrefix + "tenants/"
	networkPrefix  = configPrefix + "networks/"
	endpointPrefix = configPrefix + "endpoints/"
	allocPrefix    = Prefix + "alloc/"
	ipAllocPrefix  = allocPrefix + "ip/"
	hostPrefix     = Prefix + "hosts/"
	statusPrefix   = Prefix + "status/"
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
func ipKey(t, n, ip string) string     { return ipAllocPrefix + t + "/" + n + "/" + ip }
func ipsOf(t, n string) string         { return ipAllocPrefix + t + "/" + n + "/" }
func hostKey(h string) string          { return hostPrefix + h }
func statusOfHost(h string) string     { return statusPrefix + h + "/" }
func statusKey(h, epKey string) string { return statusPrefix + h + "/" + epKey }

// lastSegment returns what follows the final '/'.
func lastSegment(k string) string { return k[strings.LastIndexByte(k, '/')+1:] }
