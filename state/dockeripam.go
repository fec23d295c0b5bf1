package state

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// Docker's IPAM gives an address out before its endpoint exists (RequestAddress,
// then CreateEndpoint) and takes it back only after the endpoint is gone
// (DeleteEndpoint, then ReleaseAddress). Around the endpoint's life the address
// key holds a reservation naming this host, so that no other container gets an
// address Docker still counts as given out, and a late ReleaseAddress frees that
// reservation, never a newer owner of the address.
const (
	pendingPrefix = "pending:" // pending:<host>:<unix nanos>: RequestAddress gave it, CreateEndpoint has not taken it
	heldPrefix    = "held:"    // held:<host>:<unix nanos>:<docker endpoint>: its endpoint is deleted, ReleaseAddress has not come
	auxPrefix     = "aux:"     // aux:<docker network ID>, an --aux-address
)

func pendingValue(host string) string {
	return pendingPrefix + host + ":" + strconv.FormatInt(time.Now().UnixNano(), 10)
}

func heldValue(host, dockerEP string) string {
	return heldPrefix + host + ":" + strconv.FormatInt(time.Now().UnixNano(), 10) + ":" + dockerEP
}

// IsPending reports whether an allocation value is an IPAM reservation of host
// that no endpoint took yet.
func IsPending(owner, host string) bool { return strings.HasPrefix(owner, pendingPrefix+host+":") }

// reservationOf parses a pending or held value of host: whether it is held, and
// since when.
func reservationOf(val, host string) (held bool, since time.Time, ok bool) {
	rest, ok := strings.CutPrefix(val, pendingPrefix+host+":")
	if !ok {
		if rest, ok = strings.CutPrefix(val, heldPrefix+host+":"); !ok {
			return false, time.Time{}, false
		}
		held = true
		rest, _, _ = strings.Cut(rest, ":")
	}
	ns, err := strconv.ParseInt(rest, 10, 64)
	if err != nil {
		return false, time.Time{}, false
	}
	return held, time.Unix(0, ns), true
}

// ReserveIP takes an address of a network for an endpoint Docker has not created
// yet (IPAM runs before CreateEndpoint): ip, or one the allocator picks in [lo, hi]
// (0, 0: the whole subnet). It returns the address and the allocation's owner
// value that CreateEndpoint must present.
func (d *Docker) ReserveIP(ctx context.Context, tenant, network, ip string, lo, hi uint32, host string) (string, string, error) {
	s := d.s
	owner := pendingValue(host)
	for attempt := 0; attempt < maxRetries; attempt++ {
		n, _, hint, err := s.networkForAllocation(ctx, tenant, network)
		if err != nil {
			return "", "", err
		}
		c, err := s.candidateWithBlock(ctx, n, hint, host, ip, lo, hi, attempt > 0)
		if err != nil {
			return "", "", err
		}
		ops := append(setAddrOps(tenant, network, c.ip, "", owner), c.hint...)
		r, err := s.txn(ctx, []clientv3.Cmp{exists(networkKey(tenant, network)), free(ipKey(tenant, network, c.ip))}, ops...)
		if err != nil {
			return "", "", err
		}
		if r.Succeeded {
			return c.ip, owner, nil
		}
		if ip != "" {
			if ok, err := s.has(ctx, ipKey(tenant, network, c.ip)); err != nil {
				return "", "", err
			} else if ok {
				return "", "", fmt.Errorf("%w: IP %s is already used on network %s", core.ErrInUse, ip, n.Key())
			}
		}
	}
	return "", "", fmt.Errorf("reserve IP on %s/%s: too much contention, try again", tenant, network)
}

// IPOwner returns the value of an address's allocation: an endpoint name, a
// pending IPAM reservation, or "" when the address is free.
func (d *Docker) IPOwner(ctx context.Context, tenant, network, ip string) (string, error) {
	r, err := d.s.get(ctx, ipKey(tenant, network, ip))
	if err != nil || len(r.Kvs) == 0 {
		return "", err
	}
	return string(r.Kvs[0].Value), nil
}

// CreateEndpoint writes an endpoint whose IP was reserved by ReserveIP
// (owner is what ReserveIP returned), binding the address to it.
func (d *Docker) CreateEndpoint(ctx context.Context, ep core.Endpoint, owner string) (core.Endpoint, error) {
	s := d.s
	if err := core.ValidName("endpoint", ep.Name); err != nil {
		return ep, err
	}
	if ep.MAC == "" {
		ep.MAC = NewMAC()
	}
	gcmps, err := s.endpointGroup(ctx, ep)
	if err != nil {
		return ep, err
	}
	ik := ipKey(ep.Tenant, ep.Network, ep.IP)
	ops := append(endpointOps(nil, ep), setAddrOps(ep.Tenant, ep.Network, ep.IP, owner, ep.Name)...)
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", owner), free(endpointKey(ep.Tenant, ep.Name))}, gcmps...)
	r, err := s.txn(ctx, cmps, ops...)
	if err != nil {
		return ep, err
	}
	if !r.Succeeded {
		if cur, _, err := s.GetEndpoint(ctx, ep.Tenant, ep.Name); err == nil && cur.IP == ep.IP && cur.DockerEndpoint == ep.DockerEndpoint {
			return cur, nil // a repeated CreateEndpoint
		}
		return ep, fmt.Errorf("%w: IP %s on %s is not reserved for this endpoint", core.ErrInUse, ep.IP, ep.NetworkKey())
	}
	return ep, nil
}

// DeleteEndpoint is Docker's DeleteEndpoint: it removes the endpoint and,
// in the same transaction, either holds its address for Docker's coming
// ReleaseAddress (hold) or frees it (Docker released it already, or another
// IPAM gave it). It returns the revision of the delete.
func (d *Docker) DeleteEndpoint(ctx context.Context, tenant, name, host string, hold bool) (int64, error) {
	s := d.s
	for attempt := 0; attempt < maxRetries; attempt++ {
		ep, rev, err := s.GetEndpoint(ctx, tenant, name)
		if err != nil {
			return 0, err
		}
		if ep.DockerEndpoint == "" || ep.Host != host {
			// netdcli's, or another host's: not this plugin's to delete.
			return 0, fmt.Errorf("%w: endpoint %s is not a Docker endpoint of host %s", core.ErrNotFound, ep.Key(), host)
		}
		ik := ipKey(ep.Tenant, ep.Network, ep.IP)
		addr := setAddrOps(ep.Tenant, ep.Network, ep.IP, ep.Name, heldValue(host, ep.DockerEndpoint))
		if !hold {
			addr = freeAddrOps(ep.Tenant, ep.Network, ep.IP, ep.Name)
			hint, err := s.releaseHint(ctx, ep.Tenant, ep.Network, ep.IP)
			if err != nil {
				return 0, err
			}
			addr = append(addr, hint...)
		}
		// The address is touched only while it is the endpoint's own.
		ops := append(deleteEndpointOps(ep), clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", ep.Name)}, addr, nil))
		r, err := s.txn(ctx, []clientv3.Cmp{unchanged(endpointKey(ep.Tenant, ep.Name), rev)}, ops...)
		if err != nil {
			return 0, err
		}
		if r.Succeeded {
			return r.Header.Revision, nil
		}
		// The endpoint changed meanwhile (a Join, a rename): read it again.
	}
	return 0, fmt.Errorf("delete endpoint %s/%s: changed concurrently too often; try again", tenant, name)
}

// ReleaseIP is Docker's ReleaseAddress: it frees the address when it holds
// a reservation of host (pending or held), and otherwise changes nothing and
// returns what the address belongs to ("" when free).
func (d *Docker) ReleaseIP(ctx context.Context, tenant, network, ip, host string) (string, error) {
	s := d.s
	ik := ipKey(tenant, network, ip)
	for attempt := 0; attempt < maxRetries; attempt++ {
		r, err := s.get(ctx, ik)
		if err != nil || len(r.Kvs) == 0 {
			return "", err
		}
		kv := r.Kvs[0]
		if _, _, ok := reservationOf(string(kv.Value), host); !ok {
			return string(kv.Value), nil
		}
		hint, err := s.releaseHint(ctx, tenant, network, ip)
		if err != nil {
			return "", err
		}
		tr, err := s.txn(ctx, []clientv3.Cmp{unchanged(ik, kv.ModRevision)}, append(freeAddrOps(tenant, network, ip, string(kv.Value)), hint...)...)
		if err != nil {
			return "", err
		}
		if tr.Succeeded {
			return "", nil
		}
	}
	return "", fmt.Errorf("release %s on %s/%s: changed concurrently too often; try again", ip, tenant, network)
}

// Reservation is an address of a network reserved by a host's Docker IPAM and
// owned by no endpoint: pending (given out, CreateEndpoint has not come) or held
// (its endpoint is deleted, ReleaseAddress has not come).
type Reservation struct {
	Tenant, Network, IP string
	Held                bool
	Since               time.Time
	value               string
}

// HostReservations lists host's reservations, from the host's own index, for
// garbage collection of those Docker never took or released.
func (d *Docker) HostReservations(ctx context.Context, host string) ([]Reservation, error) {
	prefix := hostReservationsOf(host)
	var out []Reservation
	err := d.s.pages(ctx, prefix, func(kv *mvccpb.KeyValue) error {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), prefix), "/")
		if len(parts) != 3 {
			return nil
		}
		if held, since, ok := reservationOf(string(kv.Value), host); ok {
			out = append(out, Reservation{Tenant: parts[0], Network: parts[1], IP: parts[2], Held: held, Since: since, value: string(kv.Value)})
		}
		return nil
	})
	return out, err
}

// DropReservation frees a reservation listed by HostReservations if it is
// still the same one.
func (d *Docker) DropReservation(ctx context.Context, res Reservation) error {
	s := d.s
	ik := ipKey(res.Tenant, res.Network, res.IP)
	hint, err := s.releaseHint(ctx, res.Tenant, res.Network, res.IP)
	if err != nil {
		return err
	}
	_, err = s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", res.value)},
		append(freeAddrOps(res.Tenant, res.Network, res.IP, res.value), hint...)...)
	return err
}
