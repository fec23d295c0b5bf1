package state

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/netplugin/netplugin/core"
)

// hostRecord is stored under hosts/<host>, bound to the agent's lease.
type hostRecord struct {
	core.HostInfo
	Lease int64 `json:"lease"`
}

// HostSession is an agent's liveness: its host record and status keys live under
// one lease and disappear when the agent stops renewing it.
type HostSession struct {
	s    *Store
	sess *concurrency.Session
	host string
	// left is what a predecessor left under the lease this session took over.
	left leaseKeys
}

// Register takes host info.Name for this agent under a lease of ttl seconds.
// prev is the lease of the previous agent of this host, as this machine
// recorded it (0: none). A host held by prev is taken over with that very
// lease, which this agent then keeps alive: the host record and the status
// keys never disappear, so a restarted agent (SIGTERM or SIGKILL) is
// invisible to its peers. A host held by any other live lease is another
// agent with the same label: refused, never revoked.
func (s *Store) Register(ctx context.Context, info core.HostInfo, ttl int, prev int64) (*HostSession, error) {
	r, err := s.get(ctx, hostKey(info.Name))
	if err != nil {
		return nil, err
	}
	reuse := clientv3.LeaseID(0)
	cmp := free(hostKey(info.Name))
	if len(r.Kvs) == 1 {
		var old hostRecord
		_ = json.Unmarshal(r.Kvs[0].Value, &old)
		held := clientv3.LeaseID(r.Kvs[0].Lease)
		if held == 0 || prev == 0 || int64(held) != prev {
			return nil, fmt.Errorf("%w: host label %q is held by another agent (started %s, lease %x; a stopped one lets go when its lease expires): stop it or give this agent another --host-label",
				core.ErrInUse, info.Name, old.Started, int64(held))
		}
		reuse, cmp = held, unchanged(hostKey(info.Name), r.Kvs[0].ModRevision)
	} else if prev != 0 {
		// The record is gone but the lease may live on with our status keys.
		reuse = clientv3.LeaseID(prev)
	}
	var left leaseKeys
	if reuse != 0 {
		alive := false
		if left, alive, err = s.leaseKeys(ctx, reuse, info.Name); err != nil {
			return nil, err
		}
		if !alive {
			reuse, left = 0, leaseKeys{}
		}
	}
	opts := []concurrency.SessionOption{concurrency.WithTTL(ttl), concurrency.WithContext(ctx)}
	if reuse != 0 {
		opts = append(opts, concurrency.WithLease(reuse))
	}
	sess, err := concurrency.NewSession(s.cli, opts...)
	if err != nil {
		return nil, wrapErr(err)
	}
	rec := hostRecord{HostInfo: info, Lease: int64(sess.Lease())}
	tr, err := s.txn(ctx, []clientv3.Cmp{cmp}, clientv3.OpPut(hostKey(info.Name), mustJSON(rec), clientv3.WithLease(sess.Lease())))
	if err != nil || !tr.Succeeded {
		sess.Orphan()
		if reuse == 0 {
			rctx, cancel := s.op(context.WithoutCancel(ctx))
			_, _ = s.cli.Revoke(rctx, sess.Lease())
			cancel()
		}
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: host label %q was taken by another agent just now", core.ErrInUse, info.Name)
	}
	return &HostSession{s: s, sess: sess, host: info.Name, left: left}, nil
}

// leaseKeys is what an agent left under its lease, for the one taking it over.
type leaseKeys struct {
	serves   []string // networks (tenant/name) published under nethosts/
	statuses []string // endpoints (tenant/name) with a status of the host
}

// leaseKeys reads lease id's keys (etcd keeps them per lease, so this reads
// only the host's own, once per takeover) and whether the lease lives.
func (s *Store) leaseKeys(ctx context.Context, id clientv3.LeaseID, host string) (leaseKeys, bool, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	r, err := s.cli.TimeToLive(ctx, id, clientv3.WithAttachedKeys())
	if err != nil {
		return leaseKeys{}, false, wrapErr(err)
	}
	var left leaseKeys
	for _, k := range r.Keys {
		for _, c := range []struct {
			prefix string
			to     *[]string
		}{{netHostsPrefix, &left.serves}, {statusPrefix, &left.statuses}} {
			rest, ok := strings.CutPrefix(string(k), c.prefix)
			if key, found := strings.CutSuffix(rest, "/"+host); ok && found && strings.Count(key, "/") == 1 {
				*c.to = append(*c.to, key)
			}
		}
	}
	sort.Strings(left.serves)
	sort.Strings(left.statuses)
	return left, r.TTL > 0, nil
}

// Serves lists the networks (tenant/name) a predecessor whose lease this
// session took over published serving (see PublishNetworks).
func (h *HostSession) Serves() []string { return h.left.serves }

// InheritedStatuses are the endpoints (tenant/name) whose status a
// predecessor left under the lease this session took over: the new agent
// owns them, to rewrite or delete, although it never wrote them.
func (h *HostSession) InheritedStatuses() []string { return h.left.statuses }

// Lease identifies the session's lease, for the agent's local record.
func (h *HostSession) Lease() int64 { return int64(h.sess.Lease()) }

// Done is closed when the lease is lost (etcd unreachable for longer than the TTL).
func (h *HostSession) Done() <-chan struct{} { return h.sess.Done() }

// Revoke ends the lease at once, removing the host record and its status. It
// takes its own ctx because it runs when the agent's context is already done.
func (h *HostSession) Revoke(ctx context.Context) {
	h.sess.Orphan()
	_, _ = h.s.cli.Revoke(ctx, h.sess.Lease()) // failing, the lease expires by itself
}

// Orphan stops renewing without revoking, as a crash would; for tests.
func (h *HostSession) Orphan() { h.sess.Orphan() }

// WriteStatus puts and deletes status keys of this host in as few transactions as
// etcd's per-transaction limit allows.
func (h *HostSession) WriteStatus(ctx context.Context, put map[string]core.EndpointStatus, del []string) error {
	ops := make([]clientv3.Op, 0, len(put)+len(del))
	for epKey, st := range put {
		ops = append(ops, clientv3.OpPut(statusKey(epKey, h.host), mustJSON(st), clientv3.WithLease(h.sess.Lease())))
	}
	for _, epKey := range del {
		ops = append(ops, clientv3.OpDelete(statusKey(epKey, h.host)))
	}
	if err := h.s.batches(ctx, ops); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	return nil
}

// PublishNetworks says, under this host's lease, which networks (tenant/name)
// the host serves, with what the other hosts of each need to reach it: put
// are the networks to publish info under, del those no longer served. The
// other hosts of a network learn from it where its endpoints here are.
func (h *HostSession) PublishNetworks(ctx context.Context, info core.HostInfo, put, del []string) error {
	ops := make([]clientv3.Op, 0, len(put)+len(del))
	v := mustJSON(hostRecord{HostInfo: info, Lease: int64(h.sess.Lease())})
	for _, nk := range put {
		t, n, _ := strings.Cut(nk, "/")
		ops = append(ops, clientv3.OpPut(netHostKey(t, n, h.host), v, clientv3.WithLease(h.sess.Lease())))
	}
	for _, nk := range del {
		t, n, _ := strings.Cut(nk, "/")
		ops = append(ops, clientv3.OpDelete(netHostKey(t, n, h.host)))
	}
	if err := h.s.batches(ctx, ops); err != nil {
		return fmt.Errorf("publish networks: %w", err)
	}
	return nil
}

// batches commits ops in as few transactions as etcd's limit allows.
func (s *Store) batches(ctx context.Context, ops []clientv3.Op) error {
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		if _, err := s.txn(ctx, nil, ops[:n]...); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

// Statuses returns the observed status of every endpoint by endpoint key
// (tenant/name), per host. It reads the whole status tree: for tests and
// tools; netdcli reads the status of the endpoints it shows (StatusOf).
func (s *Store) Statuses(ctx context.Context) (map[string]map[string]core.EndpointStatus, error) {
	out := map[string]map[string]core.EndpointStatus{}
	err := s.pages(ctx, statusPrefix, func(kv *mvccpb.KeyValue) error {
		return addStatus(out, kv)
	})
	return out, err
}

// StatusOf returns what each host observed of the given endpoints (keys
// tenant/name): one prefix read per endpoint, batched.
func (s *Store) StatusOf(ctx context.Context, epKeys ...string) (map[string]map[string]core.EndpointStatus, error) {
	out := map[string]map[string]core.EndpointStatus{}
	prefixes := make([]string, len(epKeys))
	for i, k := range epKeys {
		prefixes[i] = statusOf(k)
	}
	err := s.prefixReads(ctx, prefixes, func(r *etcdserverpb.RangeResponse) error {
		for _, kv := range r.Kvs {
			if err := addStatus(out, kv); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// addStatus decodes status/<tenant>/<endpoint>/<host> into out.
func addStatus(out map[string]map[string]core.EndpointStatus, kv *mvccpb.KeyValue) error {
	rest := strings.TrimPrefix(string(kv.Key), statusPrefix)
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return nil
	}
	epKey, host := rest[:i], rest[i+1:]
	var st core.EndpointStatus
	if err := json.Unmarshal(kv.Value, &st); err != nil {
		return fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	if out[epKey] == nil {
		out[epKey] = map[string]core.EndpointStatus{}
	}
	out[epKey][host] = st
	return nil
}

// Prefixes for tools and tests that read the store directly (see keys.go).
const (
	// StatusPrefix + <tenant>/<endpoint>/<host>: what a host observed, under its lease.
	StatusPrefix = statusPrefix
	// ConfigPrefix holds the canonical desired state, IndexPrefix its index copies.
	ConfigPrefix = configPrefix
	IndexPrefix  = indexPrefix
	// HostPrefix + <host>: the host's record, under its lease.
	HostPrefix = hostPrefix
)

// Hosts lists the registered hosts, page by page.
func (s *Store) Hosts(ctx context.Context) ([]core.HostInfo, error) {
	recs, err := list[hostRecord](ctx, s, hostPrefix)
	if err != nil {
		return nil, err
	}
	out := make([]core.HostInfo, len(recs))
	for i, r := range recs {
		out[i] = r.HostInfo
	}
	return out, nil
}

// Host returns one registered host; ok is false when none is registered
// under that label.
func (s *Store) Host(ctx context.Context, name string) (core.HostInfo, bool, error) {
	r, err := s.get(ctx, hostKey(name))
	if err != nil || len(r.Kvs) == 0 {
		return core.HostInfo{}, false, err
	}
	var rec hostRecord
	if err := json.Unmarshal(r.Kvs[0].Value, &rec); err != nil {
		return core.HostInfo{}, false, fmt.Errorf("decode %s: %w", r.Kvs[0].Key, err)
	}
	return rec.HostInfo, true, nil
}

// LiveHosts reports which of the named hosts are registered: one count-only
// read each, batched.
func (s *Store) LiveHosts(ctx context.Context, names ...string) (map[string]bool, error) {
	keys := make([]string, len(names))
	for i, n := range names {
		keys[i] = hostKey(n)
	}
	c, err := s.counts(ctx, keys)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(names))
	for i, n := range names {
		out[n] = c[i] > 0
	}
	return out, nil
}

// StatusKey is where host reports what it observed of endpoint tenant/name,
// for tools and benchmarks that watch status.
func StatusKey(tenant, name, host string) string { return statusKey(tenant+"/"+name, host) }
