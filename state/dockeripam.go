package state

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

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
// yet (IPAM runs before CreateEndpoint): ip, or the lowest free one in [lo, hi]
// (0, 0: the whole subnet). It returns the address and the allocation's owner
// value that CreateEndpointReserved must present.
func (s *Store) ReserveIP(ctx context.Context, tenant, network, ip string, lo, hi uint32, host string) (string, string, error) {
	owner := pendingValue(host)
	for attempt := 0; attempt < maxRetries; attempt++ {
		n, _, err := s.GetNetwork(ctx, tenant, network)
		if err != nil {
			return "", "", err
		}
		cand, err := s.candidateIP(ctx, n, host, ip, lo, hi, attempt > 0)
		if err != nil {
			return "", "", err
		}
		r, err := s.txn(ctx, []clientv3.Cmp{exists(networkKey(tenant, network)), free(ipKey(tenant, network, cand))},
			clientv3.OpPut(ipKey(tenant, network, cand), owner))
		if err != nil {
			return "", "", err
		}
		if r.Succeeded {
			return cand, owner, nil
		}
		if ip != "" {
			if ok, err := s.has(ctx, ipKey(tenant, network, cand)); err != nil {
				return "", "", err
			} else if ok {
				return "", "", fmt.Errorf("%w: IP %s is already used on network %s", core.ErrInUse, ip, n.Key())
			}
		}
	}
	return "", "", fmt.Errorf("reserve IP on %s/%s: too much contention, try again", tenant, network)
}

// pickIPIn is pickIP restricted to [lo, hi] when hi != 0 (Docker's --ip-range).
func (s *Store) pickIPIn(ctx context.Context, n core.Network, lo, hi uint32, random bool) (string, error) {
	if hi == 0 {
		return s.pickIP(ctx, n, random)
	}
	// Lost races are retried by the caller; within a small range the lowest free
	// address is as good a candidate as a random one.
	used, err := s.usedIPs(ctx, n)
	if err != nil {
		return "", err
	}
	first, last := core.SubnetBounds(mustCIDR(n.Subnet))
	for v := max(lo, first+1); v <= hi && v < last; v++ {
		if !used[v] {
			return core.IPFromUint(v).String(), nil
		}
	}
	return "", fmt.Errorf("%w: no free IP left in the range of network %s", core.ErrInUse, n.Key())
}

// CreateEndpointReserved writes an endpoint whose IP was reserved by ReserveIP
// (owner is what ReserveIP returned), binding the address to it.
func (s *Store) CreateEndpointReserved(ctx context.Context, ep core.Endpoint, owner string) (core.Endpoint, error) {
	if err := core.ValidName("endpoint", ep.Name); err != nil {
		return ep, err
	}
	if ep.MAC == "" {
		ep.MAC = NewMAC()
	}
	ik := ipKey(ep.Tenant, ep.Network, ep.IP)
	r, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", owner), free(endpointKey(ep.Tenant, ep.Name))},
		clientv3.OpPut(endpointKey(ep.Tenant, ep.Name), mustJSON(ep)), clientv3.OpPut(ik, ep.Name))
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

// DeleteDockerEndpoint is Docker's DeleteEndpoint: it removes the endpoint and,
// in the same transaction, either holds its address for Docker's coming
// ReleaseAddress (hold) or frees it (Docker released it already, or another
// IPAM gave it). It returns the revision of the delete.
func (s *Store) DeleteDockerEndpoint(ctx context.Context, tenant, name, host string, hold bool) (int64, error) {
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
		addr := clientv3.OpDelete(ik)
		if hold {
			addr = clientv3.OpPut(ik, heldValue(host, ep.DockerEndpoint))
		}
		// The address is touched only while it is the endpoint's own.
		r, err := s.txn(ctx, []clientv3.Cmp{unchanged(endpointKey(ep.Tenant, ep.Name), rev)},
			clientv3.OpDelete(endpointKey(ep.Tenant, ep.Name)),
			clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", ep.Name)}, []clientv3.Op{addr}, nil))
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

// ReleaseDockerIP is Docker's ReleaseAddress: it frees the address when it holds
// a reservation of host (pending or held), and otherwise changes nothing and
// returns what the address belongs to ("" when free).
func (s *Store) ReleaseDockerIP(ctx context.Context, tenant, network, ip, host string) (string, error) {
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
		tr, err := s.txn(ctx, []clientv3.Cmp{unchanged(ik, kv.ModRevision)}, clientv3.OpDelete(ik))
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

// Reservations lists host's reservations on one network, for garbage
// collection of those Docker never took or released.
func (s *Store) Reservations(ctx context.Context, tenant, network, host string) ([]Reservation, error) {
	r, err := s.get(ctx, ipsOf(tenant, network), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var out []Reservation
	for _, kv := range r.Kvs {
		if held, since, ok := reservationOf(string(kv.Value), host); ok {
			out = append(out, Reservation{Tenant: tenant, Network: network, IP: lastSegment(string(kv.Key)),
				Held: held, Since: since, value: string(kv.Value)})
		}
	}
	return out, nil
}

// DropReservation frees a reservation listed by Reservations if it is still
// the same one.
func (s *Store) DropReservation(ctx context.Context, res Reservation) error {
	ik := ipKey(res.Tenant, res.Network, res.IP)
	_, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", res.value)}, clientv3.OpDelete(ik))
	return err
}
