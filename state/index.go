package state

import (
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// Index keys are copies of canonical records, written and deleted in the same
// transaction as the record by these helpers only, so that no reader of an
// index ever sees it disagree with what it indexes.

// endpointOps writes ep and its index copies. old is the endpoint as stored
// (nil when ep is new): its copies that ep no longer has go.
func endpointOps(old *core.Endpoint, ep core.Endpoint) []clientv3.Op {
	v := mustJSON(ep)
	ops := []clientv3.Op{clientv3.OpPut(endpointKey(ep.Tenant, ep.Name), v),
		clientv3.OpPut(netEndpointKey(ep.Tenant, ep.Network, ep.Name), v)}
	if ep.Host != "" {
		ops = append(ops, clientv3.OpPut(hostEndpointKey(ep.Host, ep.Tenant, ep.Name), v))
	}
	if ep.Group != "" {
		ops = append(ops, clientv3.OpPut(groupMemberKey(ep.Tenant, ep.Group, ep.Name), v))
	}
	if old != nil {
		if old.Group != "" && old.Group != ep.Group {
			ops = append(ops, clientv3.OpDelete(groupMemberKey(old.Tenant, old.Group, old.Name)))
		}
		if old.Host != "" && old.Host != ep.Host {
			ops = append(ops, clientv3.OpDelete(hostEndpointKey(old.Host, old.Tenant, old.Name)))
		}
		if old.Network != ep.Network {
			ops = append(ops, clientv3.OpDelete(netEndpointKey(old.Tenant, old.Network, old.Name)))
		}
	}
	return ops
}

// deleteEndpointOps removes ep and its index copies.
func deleteEndpointOps(ep core.Endpoint) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpDelete(endpointKey(ep.Tenant, ep.Name)),
		clientv3.OpDelete(netEndpointKey(ep.Tenant, ep.Network, ep.Name))}
	if ep.Host != "" {
		ops = append(ops, clientv3.OpDelete(hostEndpointKey(ep.Host, ep.Tenant, ep.Name)))
	}
	if ep.Group != "" {
		ops = append(ops, clientv3.OpDelete(groupMemberKey(ep.Tenant, ep.Group, ep.Name)))
	}
	return ops
}

// reservationHost returns the host a Docker reservation value names.
func reservationHost(val string) (string, bool) {
	for _, p := range []string{pendingPrefix, heldPrefix} {
		if rest, ok := strings.CutPrefix(val, p); ok {
			host, _, ok := strings.Cut(rest, ":")
			return host, ok && host != ""
		}
	}
	return "", false
}

// setAddrOps gives an address of tenant/network the owner value val and keeps
// the reservation index in step: a pending or held value is indexed under its
// host, anything else is not. was is the value it replaces ("" when the
// address was free).
func setAddrOps(tenant, network, ip, was, val string) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpPut(ipKey(tenant, network, ip), val)}
	if h, ok := reservationHost(was); ok {
		if h2, ok2 := reservationHost(val); !ok2 || h2 != h {
			ops = append(ops, clientv3.OpDelete(hostReservationKey(h, tenant, network, ip)))
		}
	}
	if h, ok := reservationHost(val); ok {
		ops = append(ops, clientv3.OpPut(hostReservationKey(h, tenant, network, ip), val))
	}
	return ops
}

// freeAddrOps frees an address whose owner value was was.
func freeAddrOps(tenant, network, ip, was string) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpDelete(ipKey(tenant, network, ip))}
	if h, ok := reservationHost(was); ok {
		ops = append(ops, clientv3.OpDelete(hostReservationKey(h, tenant, network, ip)))
	}
	return ops
}
