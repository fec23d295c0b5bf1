package state

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// HostDeleted counts what DeleteHost removed.
type HostDeleted struct {
	Endpoints, DockerNetworks, Reservations, Blocks int
}

// DeleteHost forgets a host that is gone for good: its endpoints (their
// addresses freed), its Docker networks' mappings (aux addresses released,
// networks Docker made deleted with their last user), reservations its Docker
// plugin held, and its blocks of routed networks. A host's lease going never
// frees anything by itself — the host may only be rebooting — so this is the
// operator's call, and it is refused while the host is registered. It is
// safe to run again after a failure half-way.
func (s *Store) DeleteHost(ctx context.Context, host string) (HostDeleted, error) {
	var out HostDeleted
	if err := core.ValidName("host label", host); err != nil {
		return out, err
	}
	if live, err := s.has(ctx, hostKey(host)); err != nil {
		return out, err
	} else if live {
		return out, fmt.Errorf("%w: host %s is registered (its agent runs, or its lease has not expired yet): stop its agent first", core.ErrInUse, host)
	}
	// The host's own index names its endpoints and reservations.
	eps, err := s.HostEndpoints(ctx, host)
	if err != nil {
		return out, err
	}
	for _, e := range eps {
		if err := s.DeleteEndpoint(ctx, e.Tenant, e.Name); err != nil && !errors.Is(err, core.ErrNotFound) {
			return out, fmt.Errorf("endpoint %s: %w", e.Key(), err)
		}
		out.Endpoints++
	}
	d := s.Docker()
	res, err := d.HostReservations(ctx, host)
	if err != nil {
		return out, err
	}
	for _, r := range res {
		if err := d.DropReservation(ctx, r); err != nil {
			return out, err
		}
		out.Reservations++
	}
	dns, err := d.Networks(ctx, host)
	if err != nil {
		return out, err
	}
	for _, dn := range dns {
		if err := d.Unbind(ctx, host, dn.ID); err != nil {
			return out, fmt.Errorf("Docker network %.12s: %w", dn.ID, err)
		}
		out.DockerNetworks++
	}
	// Routed blocks are found by value: an operator's command, not a periodic one.
	r, err := s.get(ctx, blockPrefix, clientv3.WithPrefix())
	if err != nil {
		return out, err
	}
	for _, kv := range r.Kvs {
		if string(kv.Value) != host {
			continue
		}
		// Only if still the host's: a block is never taken from a live owner.
		tr, err := s.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.Value(string(kv.Key)), "=", host)}, clientv3.OpDelete(string(kv.Key)))
		if err != nil {
			return out, err
		}
		if tr.Succeeded {
			out.Blocks++
		}
	}
	return out, nil
}
