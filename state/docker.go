package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// Docker networks are host-local to Docker (scope "local"): every host that runs
// `docker network create` gets its own Docker network ID for one logical network.
// docker/<host>/<docker network ID> maps it to tenant/network.
const dockerPrefix = Prefix + "docker/"

func dockerKey(host, id string) string { return dockerPrefix + host + "/" + id }
func dockersOf(host string) string     { return dockerPrefix + host + "/" }

// dockerusers/<tenant>/<network>/<host>/<docker network ID> indexes the Docker
// networks of one network, written in the same transaction as each mapping, so
// that questions about one network ("does another host still use it?", "who
// names this aux address?") read only its users.
const usersPrefix = Prefix + "dockerusers/"

func usersOf(t, n string) string           { return usersPrefix + t + "/" + n + "/" }
func userKey(t, n, host, id string) string { return usersOf(t, n) + host + "/" + id }

// networkUser is the value of a users index key.
type networkUser struct {
	Aux []string `json:"aux,omitempty"`
}

// auxValue marks an address as an --aux-address of the network.
const auxValue = "aux"

// IsAux reports whether an allocation value is an aux address (auxPrefix: as
// an older version wrote it, one Docker network's).
func IsAux(v string) bool { return v == auxValue || strings.HasPrefix(v, auxPrefix) }

// DockerNetwork is one host's Docker network of a logical network.
type DockerNetwork struct {
	Host    string   `json:"host"`
	ID      string   `json:"id"`
	Tenant  string   `json:"tenant"`
	Network string   `json:"network"`
	Aux     []string `json:"aux,omitempty"`
	// PoolID is the IPAM pool Docker allocates this network's addresses from;
	// IPAM calls name only the pool. Empty: an older version's mapping, whose
	// pool is found by subnet.
	PoolID string `json:"poolID,omitempty"`
	// ForeignIPAM: another IPAM driver (Docker's own) gives the addresses, so
	// ours never sees their ReleaseAddress.
	ForeignIPAM bool `json:"foreignIPAM,omitempty"`
	// Group is the group (of the network's tenant) every endpoint of the
	// Docker network joins unless its connect names another (-o group=).
	Group string `json:"group,omitempty"`
	// Created lets garbage collection tell a network Docker has not stored yet
	// from one it deleted while netplugin was away.
	Created time.Time `json:"created"`
}

// Docker is the store of the Docker plugin: the mapping of each host's Docker
// networks to netplugin networks, and the IPAM reservations Docker's calls
// make (dockeripam.go). It shares the Store's connection and fence.
type Docker struct{ s *Store }

// Docker returns the Docker plugin's store.
func (s *Store) Docker() *Docker { return &Docker{s: s} }

// ProvisionalName is the name of a network Docker created before its Docker name
// is known (Docker never tells a driver the name); it is renamed right after.
func ProvisionalName(dockerID string) string { return "docker-" + dockerID[:min(12, len(dockerID))] }

// IsProvisional reports whether a network still has its provisional name.
func IsProvisional(name string) bool { return strings.HasPrefix(name, "docker-") }

// Network returns the mapping of a Docker network on host.
func (d *Docker) Network(ctx context.Context, host, id string) (DockerNetwork, error) {
	r, err := d.s.get(ctx, dockerKey(host, id))
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

// Networks lists the Docker networks of host.
func (d *Docker) Networks(ctx context.Context, host string) ([]DockerNetwork, error) {
	return list[DockerNetwork](ctx, d.s, dockersOf(host))
}

// Bind makes a Docker network on dn.Host stand for a logical
// network: want.Name names it, or else the tenant's network with exactly the same
// subnet is joined (a second host's `docker network create` joins the first's),
// or else a new network is created under a provisional name. Binding the same
// Docker network again returns the same network. A rejected bind leaves the
// store as it was.
func (d *Docker) Bind(ctx context.Context, dn DockerNetwork, want core.Network) (core.Network, error) {
	s := d.s
	if cur, err := d.Network(ctx, dn.Host, dn.ID); err == nil {
		n, _, err := s.GetNetwork(ctx, cur.Tenant, cur.Network)
		return n, err
	}
	if want.Tenant == "" {
		want.Tenant = core.DefaultTenant
	}
	if err := core.ValidName("tenant", want.Tenant); err != nil {
		return want, err
	}
	if want.Name != "" {
		if err := core.ValidName("network", want.Name); err != nil {
			return want, err
		}
	}
	aux, err := auxAddresses(dn.Aux, want)
	if err != nil {
		return want, err
	}
	dn.Aux = aux
	// `-o tenant=blue` on docker network create makes the tenant if needed:
	// Docker users do not run netdcli first. What this call made it undoes when
	// the bind fails.
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()
	if err := s.tenantExists(ctx, want.Tenant); err != nil {
		if err := s.CreateTenant(ctx, want.Tenant); err == nil {
			undo = append(undo, func() { _ = s.DeleteTenant(context.WithoutCancel(ctx), want.Tenant) })
		} else if !errors.Is(err, core.ErrExists) {
			return want, err
		}
	}
	n, found, err := d.target(ctx, want)
	if err != nil {
		return n, err
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
		undo = append(undo, func() { _ = d.deleteUnused(context.WithoutCancel(ctx), n.Tenant, n.Name) })
	}
	for _, a := range dn.Aux {
		if err := core.ValidateEndpointIP(n, a); err != nil {
			return n, fmt.Errorf("aux address: %w", err)
		}
	}
	dn.Tenant, dn.Network = n.Tenant, n.Name
	for attempt := 0; attempt < maxRetries; attempt++ {
		cmps := []clientv3.Cmp{free(dockerKey(dn.Host, dn.ID)), exists(networkKey(n.Tenant, n.Name)),
			emptyPrefix(usersOf(n.Tenant, n.Name) + dn.Host + "/")}
		ops := []clientv3.Op{clientv3.OpPut(dockerKey(dn.Host, dn.ID), mustJSON(dn)),
			clientv3.OpPut(userKey(n.Tenant, n.Name, dn.Host, dn.ID), mustJSON(networkUser{Aux: dn.Aux}))}
		// Aux addresses are the network's, shared by every Docker network that
		// names them: taken by the first, kept while any names them.
		for _, a := range dn.Aux {
			ik := ipKey(n.Tenant, n.Name, a)
			r, err := s.get(ctx, ik)
			if err != nil {
				return n, err
			}
			if len(r.Kvs) == 0 {
				cmps = append(cmps, free(ik))
				ops = append(ops, clientv3.OpPut(ik, auxValue))
				continue
			}
			if !IsAux(string(r.Kvs[0].Value)) {
				return n, fmt.Errorf("%w: aux address %s is used by endpoint %q of network %s", core.ErrInUse, a, r.Kvs[0].Value, n.Key())
			}
			cmps = append(cmps, unchanged(ik, r.Kvs[0].ModRevision))
		}
		r, err := s.txn(ctx, cmps, ops...)
		if err != nil {
			return n, err
		}
		if r.Succeeded {
			undo = nil
			return n, nil
		}
		if ok, err := s.has(ctx, dockerKey(dn.Host, dn.ID)); err != nil {
			return n, err
		} else if ok {
			return n, fmt.Errorf("%w: Docker network %.12s is bound concurrently; try again", core.ErrInUse, dn.ID)
		}
		users, err := s.get(ctx, usersOf(n.Tenant, n.Name)+dn.Host+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return n, err
		}
		if len(users.Kvs) > 0 {
			return n, fmt.Errorf("%w: network %s already has Docker network %.12s on host %s", core.ErrInUse, n.Key(), lastSegment(string(users.Kvs[0].Key)), dn.Host)
		}
		if ok, err := s.has(ctx, networkKey(n.Tenant, n.Name)); err != nil {
			return n, err
		} else if !ok {
			return n, fmt.Errorf("%w: network %s was removed or renamed meanwhile; try again", core.ErrNotFound, n.Key())
		}
		// An aux address changed hands meanwhile: read again.
	}
	return n, fmt.Errorf("bind Docker network %.12s to %s: too much contention, try again", dn.ID, n.Key())
}

// target finds the network a Docker network joins: want.Name, or the
// tenant's network with want's subnet.
func (d *Docker) target(ctx context.Context, want core.Network) (core.Network, bool, error) {
	s := d.s
	if want.Name != "" {
		n, _, err := s.GetNetwork(ctx, want.Tenant, want.Name)
		if errors.Is(err, core.ErrNotFound) {
			return want, false, nil
		}
		return n, err == nil, err
	}
	nets, err := s.Networks(ctx, want.Tenant)
	if err != nil && !errors.Is(err, core.ErrNotFound) {
		return want, false, err
	}
	for _, o := range nets {
		if o.Subnet == want.Subnet {
			return o, true, nil
		}
	}
	return want, false, nil
}

// auxAddresses validates --aux-address values against the subnet Docker asked
// for, in canonical form and without repeats.
func auxAddresses(in []string, want core.Network) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, a := range in {
		if err := core.ValidateEndpointIP(want, a); err != nil {
			return nil, fmt.Errorf("aux address: %w", err)
		}
		a = net.ParseIP(a).To4().String()
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out, nil
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

// Unbind forgets a Docker network: the aux addresses no other
// Docker network of the network names are released, and a network Docker
// created is deleted with its last Docker network when it has no endpoints
// left. Unknown IDs are fine (Docker retries deletes).
func (d *Docker) Unbind(ctx context.Context, host, id string) error {
	s := d.s
	for attempt := 0; attempt < maxRetries; attempt++ {
		r, err := s.get(ctx, dockerKey(host, id))
		if err != nil || len(r.Kvs) == 0 {
			return err
		}
		var dn DockerNetwork
		if err := json.Unmarshal(r.Kvs[0].Value, &dn); err != nil {
			// Undecodable: forget it, it can name nothing we could release.
			_, err := s.txn(ctx, nil, clientv3.OpDelete(dockerKey(host, id)))
			return err
		}
		// Only this network's users are read: the index is written with each mapping.
		users, err := s.get(ctx, usersOf(dn.Tenant, dn.Network), clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision))
		if err != nil {
			return err
		}
		mine := userKey(dn.Tenant, dn.Network, host, id)
		cmps := []clientv3.Cmp{unchanged(dockerKey(host, id), r.Kvs[0].ModRevision),
			clientv3.Compare(clientv3.ModRevision(usersOf(dn.Tenant, dn.Network)), "<", r.Header.Revision+1).WithPrefix()}
		needed := map[string]bool{}
		others := 0
		for _, kv := range users.Kvs {
			if string(kv.Key) == mine {
				continue
			}
			others++
			// Another user leaving at the same time must be seen, or neither
			// of us would release what only we two named.
			cmps = append(cmps, unchanged(string(kv.Key), kv.ModRevision))
			var u networkUser
			_ = json.Unmarshal(kv.Value, &u)
			for _, a := range u.Aux {
				needed[a] = true
			}
		}
		ops := []clientv3.Op{clientv3.OpDelete(dockerKey(host, id)), clientv3.OpDelete(mine)}
		// Docker removes a network only once its endpoints are gone and
		// released: what this host still reserves there no call will take
		// or release any more.
		res, err := s.get(ctx, hostNetReservationsOf(host, dn.Tenant, dn.Network), clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision))
		if err != nil {
			return err
		}
		var freed []string
		for _, kv := range res.Kvs {
			ip := lastSegment(string(kv.Key))
			ik := ipKey(dn.Tenant, dn.Network, ip)
			ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", string(kv.Value))},
				freeAddrOps(dn.Tenant, dn.Network, ip, string(kv.Value)), nil))
			freed = append(freed, ip)
		}
		for _, a := range dn.Aux {
			if needed[a] {
				continue
			}
			freed = append(freed, a)
			ik := ipKey(dn.Tenant, dn.Network, a)
			// Only while it is still an aux address: an endpoint may own it by now.
			for _, v := range []string{auxValue, auxPrefix + id} {
				ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", v)}, []clientv3.Op{clientv3.OpDelete(ik)}, nil))
			}
		}
		hint, err := s.releaseHint(ctx, dn.Tenant, dn.Network, freed...)
		if err != nil {
			return err
		}
		tr, err := s.txn(ctx, cmps, append(ops, hint...)...)
		if err != nil {
			return err
		}
		if !tr.Succeeded {
			continue // another host bound or unbound meanwhile: read again
		}
		if others > 0 {
			return nil
		}
		return d.deleteUnused(ctx, dn.Tenant, dn.Network)
	}
	return fmt.Errorf("unbind Docker network %.12s: changed concurrently too often; try again", id)
}

// deleteUnused deletes a network Docker created once no Docker network stands
// for it and it has no endpoints; anything else keeps it.
func (d *Docker) deleteUnused(ctx context.Context, tenant, name string) error {
	s := d.s
	n, rev, err := s.GetNetwork(ctx, tenant, name)
	if err != nil || n.CreatedBy != "docker" {
		return nil
	}
	_, err = s.txn(ctx, []clientv3.Cmp{unchanged(networkKey(n.Tenant, n.Name), rev), emptyPrefix(ipsOf(n.Tenant, n.Name)),
		emptyPrefix(usersOf(n.Tenant, n.Name))}, deleteNetworkOps(n)...)
	return err
}

// IndexNetworks writes the per-network index of host's Docker networks
// that a version before the index mapped: once, at start.
func (d *Docker) IndexNetworks(ctx context.Context, host string) error {
	s := d.s
	r, err := s.get(ctx, dockersOf(host), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	for _, kv := range r.Kvs {
		var dn DockerNetwork
		if json.Unmarshal(kv.Value, &dn) != nil {
			continue
		}
		uk := userKey(dn.Tenant, dn.Network, host, dn.ID)
		if _, err := s.txn(ctx, []clientv3.Cmp{unchanged(string(kv.Key), kv.ModRevision), free(uk)},
			clientv3.OpPut(uk, mustJSON(networkUser{Aux: dn.Aux}))); err != nil {
			return err
		}
	}
	return nil
}

// Rename gives a network its real name, moving every key that names it
// in one transaction: the network, its tag's value, its addresses, its hosts'
// blocks, its endpoints, and the Docker mappings and their index. Every key
// read is compared by revision, and each prefix must have gained no key since
// the read, so a write that lands meanwhile (a Join, a new endpoint, another
// host's bind) is never lost: the rename reads again and retries. It is meant
// for a network Docker just created, so it refuses networks whose keys would not
// fit in one transaction.
func (d *Docker) Rename(ctx context.Context, tenant, old, name string) error {
	s := d.s
	if err := core.ValidName("network", name); err != nil {
		return err
	}
	for attempt := 0; attempt < maxRetries; attempt++ {
		cmps, ops, err := s.renameTxn(ctx, tenant, old, name)
		if err != nil {
			return err
		}
		r, err := s.txn(ctx, cmps, ops...)
		if errors.Is(err, rpctypes.ErrTooManyOps) {
			return fmt.Errorf("rename %s/%s to %s: too many keys to move in one transaction", tenant, old, name)
		}
		if err != nil {
			return err
		}
		if r.Succeeded {
			return nil
		}
		if ok, err := s.has(ctx, networkKey(tenant, name)); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("%w: network %q in tenant %q", core.ErrExists, name, tenant)
		}
	}
	return fmt.Errorf("rename %s/%s: %w", tenant, old, ErrConflict)
}

// renameTxn reads, at one revision, every key naming tenant/old and returns the
// transaction that moves them to tenant/name.
func (s *Store) renameTxn(ctx context.Context, tenant, old, name string) ([]clientv3.Cmp, []clientv3.Op, error) {
	nr, err := s.get(ctx, networkKey(tenant, old))
	if err != nil {
		return nil, nil, err
	}
	if len(nr.Kvs) == 0 {
		return nil, nil, fmt.Errorf("%w: unknown network %q in tenant %q", core.ErrNotFound, old, tenant)
	}
	var n core.Network
	if err := json.Unmarshal(nr.Kvs[0].Value, &n); err != nil {
		return nil, nil, fmt.Errorf("decode network %s/%s: %w", tenant, old, err)
	}
	rev := nr.Header.Revision
	at := func(prefix string) (*clientv3.GetResponse, error) {
		return s.get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	}
	ips, err := at(ipsOf(tenant, old))
	if err != nil {
		return nil, nil, err
	}
	blocks, err := at(blocksOf(tenant, old))
	if err != nil {
		return nil, nil, err
	}
	users, err := at(usersOf(tenant, old))
	if err != nil {
		return nil, nil, err
	}
	eps, err := at(netEndpointsOf(tenant, old))
	if err != nil {
		return nil, nil, err
	}
	hint, err := s.get(ctx, ipFullKey(tenant, old), clientv3.WithRev(rev))
	if err != nil {
		return nil, nil, err
	}
	notNewer := func(prefix string) clientv3.Cmp {
		return clientv3.Compare(clientv3.ModRevision(prefix), "<", rev+1).WithPrefix()
	}
	newKey := func(k, oldPrefix, newPrefix string) string { return newPrefix + strings.TrimPrefix(k, oldPrefix) }
	cmps := []clientv3.Cmp{unchanged(networkKey(tenant, old), nr.Kvs[0].ModRevision), free(networkKey(tenant, name)),
		clientv3.Compare(clientv3.Value(tagKey(n.Encap, n.Tag)), "=", n.Key()),
		emptyPrefix(ipsOf(tenant, name)), emptyPrefix(blocksOf(tenant, name)), emptyPrefix(usersOf(tenant, name)),
		emptyPrefix(netEndpointsOf(tenant, name)), free(ipFullKey(tenant, name)),
		// No address, block, user or endpoint added meanwhile.
		notNewer(ipsOf(tenant, old)), notNewer(blocksOf(tenant, old)), notNewer(usersOf(tenant, old)), notNewer(netEndpointsOf(tenant, old))}
	n.Name = name
	ops := []clientv3.Op{clientv3.OpDelete(networkKey(tenant, old)), clientv3.OpPut(networkKey(tenant, name), mustJSON(n)),
		clientv3.OpPut(tagKey(n.Encap, n.Tag), n.Key())}
	move := func(kvs []*mvccpb.KeyValue, oldPrefix, newPrefix string) {
		for _, kv := range kvs {
			cmps = append(cmps, unchanged(string(kv.Key), kv.ModRevision))
			ops = append(ops, clientv3.OpDelete(string(kv.Key)), clientv3.OpPut(newKey(string(kv.Key), oldPrefix, newPrefix), string(kv.Value)))
		}
	}
	for _, kv := range ips.Kvs {
		ip, val := lastSegment(string(kv.Key)), string(kv.Value)
		cmps = append(cmps, unchanged(string(kv.Key), kv.ModRevision))
		ops = append(ops, freeAddrOps(tenant, old, ip, val)...)
		ops = append(ops, setAddrOps(tenant, name, ip, "", val)...)
	}
	move(blocks.Kvs, blocksOf(tenant, old), blocksOf(tenant, name))
	move(users.Kvs, usersOf(tenant, old), usersOf(tenant, name))
	move(hint.Kvs, ipFullKey(tenant, old), ipFullKey(tenant, name))
	for _, kv := range eps.Kvs {
		var e core.Endpoint
		if json.Unmarshal(kv.Value, &e) != nil || e.Network != old {
			continue
		}
		was := e
		e.Network = name
		// The index copy and the endpoint are written together: one revision.
		cmps = append(cmps, unchanged(endpointKey(e.Tenant, e.Name), kv.ModRevision))
		ops = append(ops, endpointOps(&was, e)...)
	}
	for _, kv := range users.Kvs {
		host, id, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), usersOf(tenant, old)), "/")
		if !ok {
			continue
		}
		mr, err := s.get(ctx, dockerKey(host, id), clientv3.WithRev(rev))
		if err != nil {
			return nil, nil, err
		}
		var dn DockerNetwork
		if len(mr.Kvs) == 0 || json.Unmarshal(mr.Kvs[0].Value, &dn) != nil || dn.Tenant != tenant || dn.Network != old {
			continue
		}
		dn.Network = name
		cmps = append(cmps, unchanged(dockerKey(host, id), mr.Kvs[0].ModRevision))
		ops = append(ops, clientv3.OpPut(dockerKey(host, id), mustJSON(dn)))
	}
	// The limit is the cluster's (--max-txn-ops): a default cluster takes
	// about 20 endpoints, the embedded etcd 160.
	return cmps, ops, nil
}

// AttachNetNS records the sandbox a Docker endpoint was joined to, provided the
// endpoint is still as read at rev (the link handed to Docker was built from
// that read; a rename meanwhile means another link), and returns the revision
// of the write, so that the caller can wait for the agent to see it.
func (d *Docker) AttachNetNS(ctx context.Context, ep core.Endpoint, rev int64, netns string) (int64, error) {
	was := ep
	ep.NetNS = netns
	r, err := d.s.txn(ctx, []clientv3.Cmp{unchanged(endpointKey(ep.Tenant, ep.Name), rev)}, endpointOps(&was, ep)...)
	if err != nil {
		return 0, err
	}
	if !r.Succeeded {
		return 0, fmt.Errorf("%w: endpoint %s changed concurrently", ErrConflict, ep.Key())
	}
	return r.Header.Revision, nil
}

// ErrConflict: a transaction lost a race with a concurrent change; the caller
// reads again and retries.
var ErrConflict = errors.New("changed concurrently; try again")

// NetworkOfPool finds the Docker network of host whose IPAM pool is poolID,
// and its network. A pool ID of an older version names no network:
// legacySubnet, when given, finds the older mapping of that subnet instead.
func (d *Docker) NetworkOfPool(ctx context.Context, host, poolID, legacySubnet string) (DockerNetwork, core.Network, error) {
	s := d.s
	mine, err := d.Networks(ctx, host)
	if err != nil {
		return DockerNetwork{}, core.Network{}, err
	}
	for _, dn := range mine {
		if dn.PoolID == "" && legacySubnet != "" {
			n, _, err := s.GetNetwork(ctx, dn.Tenant, dn.Network)
			if err == nil && n.Subnet == legacySubnet {
				return dn, n, nil
			}
			continue
		}
		if dn.PoolID == poolID && legacySubnet == "" {
			n, _, err := s.GetNetwork(ctx, dn.Tenant, dn.Network)
			return dn, n, err // not found: renamed between the reads, the caller reads again
		}
	}
	return DockerNetwork{}, core.Network{}, fmt.Errorf("%w: no netplugin Docker network has IPAM pool %.80s on %s", core.ErrNotFound, poolID, host)
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
