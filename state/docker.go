package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// Docker networks are host-local to Docker (scope "local"): every host that runs
// `docker network create` gets its own Docker network ID for one logical network.
// docker/<host>/<docker network ID> maps it to tenant/network.
const dockerPrefix = Prefix + "docker/"

func dockerKey(host, id string) string { return dockerPrefix + host + "/" + id }
func dockersOf(host string) string     { return dockerPrefix + host + "/" }

// DockerNetwork is one host's Docker network of a logical network.
type DockerNetwork struct {
	Host    string   `json:"host"`
	ID      string   `json:"id"`
	Tenant  string   `json:"tenant"`
	Network string   `json:"network"`
	Aux     []string `json:"aux,omitempty"`
	// ForeignIPAM: another IPAM driver (Docker's own) gives the addresses, so
	// ours never sees their ReleaseAddress.
	ForeignIPAM bool `json:"foreignIPAM,omitempty"`
	// Created lets garbage collection tell a network Docker has not stored yet
	// from one it deleted while netplugin was away.
	Created time.Time `json:"created"`
}

// ProvisionalName is the name of a network Docker created before its Docker name
// is known (Docker never tells a driver the name); it is renamed right after.
func ProvisionalName(dockerID string) string { return "docker-" + dockerID[:min(12, len(dockerID))] }

// IsProvisional reports whether a network still has its provisional name.
func IsProvisional(name string) bool { return strings.HasPrefix(name, "docker-") }

// DockerNetwork returns the mapping of a Docker network on host.
func (s *Store) DockerNetwork(ctx context.Context, host, id string) (DockerNetwork, error) {
	r, err := s.get(ctx, dockerKey(host, id))
	if err != nil {
		return DockerNetwork{}, err
	}
	if len(r.Kvs) == 0 {
		return DockerNetwork{}, fmt.Errorf("%w: Docker network %.12s is not a netplugin network on %s", core.ErrNotFound, id, host)
	}
	var dn DockerNetwork
	if err := json.Unmarshal(r.Kvs[0].Value, &dn); err != nil {
		return dn, fmt.Errorf("decode docker network %s: %w", id, err)
	}
	return dn, nil
}

// DockerNetworks lists the Docker networks of host.
func (s *Store) DockerNetworks(ctx context.Context, host string) ([]DockerNetwork, error) {
	return list[DockerNetwork](ctx, s, dockersOf(host))
}

// BindDockerNetwork makes a Docker network on dn.Host stand for a logical
// network: want.Name names it, or else the tenant's network with exactly the same
// subnet is joined (a second host's `docker network create` joins the first's),
// or else a new network is created under a provisional name. Binding the same
// Docker network again returns the same network.
func (s *Store) BindDockerNetwork(ctx context.Context, dn DockerNetwork, want core.Network) (core.Network, error) {
	if cur, err := s.DockerNetwork(ctx, dn.Host, dn.ID); err == nil {
		n, _, err := s.GetNetwork(ctx, cur.Tenant, cur.Network)
		return n, err
	}
	if want.Tenant == "" {
		want.Tenant = core.DefaultTenant
	}
	// `-o tenant=blue` on docker network create makes the tenant if needed:
	// Docker users do not run netdcli first.
	if err := s.tenantExists(ctx, want.Tenant); err != nil {
		if err := s.CreateTenant(ctx, want.Tenant); err != nil && !errors.Is(err, core.ErrExists) {
			return want, err
		}
	}
	var n core.Network
	found := false
	if want.Name != "" {
		cur, _, err := s.GetNetwork(ctx, want.Tenant, want.Name)
		if err == nil {
			n, found = cur, true
		}
	} else {
		nets, err := s.Networks(ctx, want.Tenant)
		if err != nil {
			return want, err
		}
		for _, o := range nets {
			if o.Subnet == want.Subnet {
				n, found = o, true
				break
			}
		}
	}
	if found {
		if err := joinable(n, want); err != nil {
			return n, err
		}
	} else {
		if want.Name == "" {
			want.Name = ProvisionalName(dn.ID)
		}
		want.CreatedBy = "docker"
		created, err := s.CreateNetwork(ctx, want)
		if err != nil {
			return created, err
		}
		n = created
	}
	mine, err := s.DockerNetworks(ctx, dn.Host)
	if err != nil {
		return n, err
	}
	for _, o := range mine {
		if o.Tenant == n.Tenant && o.Network == n.Name {
			return n, fmt.Errorf("%w: network %s already has Docker network %.12s on host %s", core.ErrInUse, n.Key(), o.ID, dn.Host)
		}
	}
	dn.Tenant, dn.Network = n.Tenant, n.Name
	cmps := []clientv3.Cmp{free(dockerKey(dn.Host, dn.ID)), exists(networkKey(n.Tenant, n.Name))}
	ops := []clientv3.Op{clientv3.OpPut(dockerKey(dn.Host, dn.ID), mustJSON(dn))}
	for _, a := range dn.Aux {
		if err := core.ValidateEndpointIP(n, a); err != nil {
			return n, fmt.Errorf("aux address: %w", err)
		}
		cmps = append(cmps, free(ipKey(n.Tenant, n.Name, a)))
		ops = append(ops, clientv3.OpPut(ipKey(n.Tenant, n.Name, a), auxPrefix+dn.ID))
	}
	r, err := s.txn(ctx, cmps, ops...)
	if err != nil {
		return n, err
	}
	if !r.Succeeded {
		return n, fmt.Errorf("%w: an aux address of Docker network %.12s is in use on %s, or the network changed; try again", core.ErrInUse, dn.ID, n.Key())
	}
	return n, nil
}

// joinable checks that what Docker asked for matches an existing network.
func joinable(n, want core.Network) error {
	if want.Subnet != "" && want.Subnet != n.Subnet {
		return fmt.Errorf("%w: network %s has subnet %s, not %s", core.ErrInvalid, n.Key(), n.Subnet, want.Subnet)
	}
	if want.Tag != 0 && want.Tag != n.Tag {
		return fmt.Errorf("%w: network %s has tag %d, not %d", core.ErrInvalid, n.Key(), n.Tag, want.Tag)
	}
	if want.Driver != "" && want.Driver != n.Driver {
		return fmt.Errorf("%w: network %s uses driver %s, not %s", core.ErrInvalid, n.Key(), n.Driver, want.Driver)
	}
	return nil
}

// UnbindDockerNetwork forgets a Docker network: its aux addresses are released,
// and a network Docker created is deleted with its last Docker network when it
// has no endpoints left. Unknown IDs are fine (Docker retries deletes).
func (s *Store) UnbindDockerNetwork(ctx context.Context, host, id string) error {
	dn, err := s.DockerNetwork(ctx, host, id)
	if err != nil {
		if errors.Is(err, core.ErrNotFound) {
			return nil
		}
		return err
	}
	ops := []clientv3.Op{clientv3.OpDelete(dockerKey(host, id))}
	for _, a := range dn.Aux {
		ops = append(ops, clientv3.OpDelete(ipKey(dn.Tenant, dn.Network, a)))
	}
	if _, err := s.txn(ctx, nil, ops...); err != nil {
		return err
	}
	n, _, err := s.GetNetwork(ctx, dn.Tenant, dn.Network)
	if err != nil || n.CreatedBy != "docker" {
		return nil
	}
	r, err := s.get(ctx, dockerPrefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	for _, kv := range r.Kvs {
		var o DockerNetwork
		if json.Unmarshal(kv.Value, &o) == nil && o.Tenant == n.Tenant && o.Network == n.Name {
			return nil // another host still uses it
		}
	}
	if err := s.DeleteNetwork(ctx, n.Tenant, n.Name); err != nil && !errors.Is(err, core.ErrInUse) {
		return err
	}
	return nil
}

// RenameNetwork gives a network its real name, moving every key that names it
// in one transaction. It is meant for a network Docker just created, so it
// refuses networks whose keys would not fit in one transaction.
func (s *Store) RenameNetwork(ctx context.Context, tenant, old, name string) error {
	if err := core.ValidName("network", name); err != nil {
		return err
	}
	n, rev, err := s.GetNetwork(ctx, tenant, old)
	if err != nil {
		return err
	}
	ips, err := s.get(ctx, ipsOf(tenant, old), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	eps, err := s.Endpoints(ctx, tenant, old)
	if err != nil {
		return err
	}
	maps, err := s.get(ctx, dockerPrefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	n.Name = name
	cmps := []clientv3.Cmp{unchanged(networkKey(tenant, old), rev), free(networkKey(tenant, name)), emptyPrefix(ipsOf(tenant, name))}
	ops := []clientv3.Op{clientv3.OpDelete(networkKey(tenant, old)), clientv3.OpPut(networkKey(tenant, name), mustJSON(n)),
		clientv3.OpPut(tagKey(n.Encap, n.Tag), n.Key())}
	for _, kv := range ips.Kvs {
		cmps = append(cmps, unchanged(string(kv.Key), kv.ModRevision))
		ops = append(ops, clientv3.OpDelete(string(kv.Key)), clientv3.OpPut(ipKey(tenant, name, lastSegment(string(kv.Key))), string(kv.Value)))
	}
	for _, e := range eps {
		e.Network = name
		ops = append(ops, clientv3.OpPut(endpointKey(e.Tenant, e.Name), mustJSON(e)))
	}
	for _, kv := range maps.Kvs {
		var dn DockerNetwork
		if json.Unmarshal(kv.Value, &dn) == nil && dn.Tenant == tenant && dn.Network == old {
			dn.Network = name
			cmps = append(cmps, unchanged(string(kv.Key), kv.ModRevision))
			ops = append(ops, clientv3.OpPut(string(kv.Key), mustJSON(dn)))
		}
	}
	if len(ops) > maxTxnOps || len(cmps) > maxTxnOps {
		return fmt.Errorf("rename %s/%s to %s: too many keys to move in one transaction", tenant, old, name)
	}
	r, err := s.txn(ctx, cmps, ops...)
	if err != nil {
		return err
	}
	if !r.Succeeded {
		if ok, _ := s.has(ctx, networkKey(tenant, name)); ok {
			return fmt.Errorf("%w: network %q in tenant %q", core.ErrExists, name, tenant)
		}
		return fmt.Errorf("rename %s/%s: changed concurrently; try again", tenant, old)
	}
	return nil
}

// AttachNetNS records the sandbox a Docker endpoint was joined to and returns
// the revision of the write, so that the caller can wait for the agent to see it.
func (s *Store) AttachNetNS(ctx context.Context, tenant, name, netns string) (int64, error) {
	ep, rev, err := s.GetEndpoint(ctx, tenant, name)
	if err != nil {
		return 0, err
	}
	ep.NetNS = netns
	r, err := s.txn(ctx, []clientv3.Cmp{unchanged(endpointKey(tenant, name), rev)},
		clientv3.OpPut(endpointKey(tenant, name), mustJSON(ep)))
	if err != nil {
		return 0, err
	}
	if !r.Succeeded {
		return 0, fmt.Errorf("endpoint %s/%s changed concurrently; try again", tenant, name)
	}
	return r.Header.Revision, nil
}

// NetworkOfSubnet finds the logical network behind a Docker network of host
// whose subnet is subnet: IPAM calls carry only the pool, never the network.
func (s *Store) NetworkOfSubnet(ctx context.Context, host, subnet string) (core.Network, error) {
	// A network renamed between reading the mapping and reading the network is
	// found on the next try: the rename moves both in one transaction.
	for attempt := 0; attempt < 3; attempt++ {
		mine, err := s.DockerNetworks(ctx, host)
		if err != nil {
			return core.Network{}, err
		}
		renamed := false
		for _, dn := range mine {
			n, _, err := s.GetNetwork(ctx, dn.Tenant, dn.Network)
			if err == nil && n.Subnet == subnet {
				return n, nil
			}
			renamed = renamed || errors.Is(err, core.ErrNotFound)
		}
		if !renamed {
			break
		}
	}
	return core.Network{}, fmt.Errorf("%w: no netplugin Docker network with subnet %s on %s", core.ErrNotFound, subnet, host)
}

// SubnetRange converts an --ip-range CIDR into bounds inside its subnet.
func SubnetRange(subpool string) (uint32, uint32, error) {
	if subpool == "" {
		return 0, 0, nil
	}
	_, sn, err := net.ParseCIDR(subpool)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: ip range %q", core.ErrInvalid, subpool)
	}
	lo, hi := core.SubnetBounds(sn)
	return lo, hi, nil
}
