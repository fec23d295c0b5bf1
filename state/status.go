package state

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

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
		if alive, err := s.leaseAlive(ctx, clientv3.LeaseID(prev)); err != nil {
			return nil, err
		} else if alive {
			reuse = clientv3.LeaseID(prev)
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
	return &HostSession{s: s, sess: sess, host: info.Name}, nil
}

func (s *Store) leaseAlive(ctx context.Context, id clientv3.LeaseID) (bool, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	r, err := s.cli.TimeToLive(ctx, id)
	if err != nil {
		return false, wrapErr(err)
	}
	return r.TTL > 0, nil
}

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
		ops = append(ops, clientv3.OpPut(statusKey(h.host, epKey), mustJSON(st), clientv3.WithLease(h.sess.Lease())))
	}
	for _, epKey := range del {
		ops = append(ops, clientv3.OpDelete(statusKey(h.host, epKey)))
	}
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		if _, err := h.s.txn(ctx, nil, ops[:n]...); err != nil {
			return fmt.Errorf("write status: %w", err)
		}
		ops = ops[n:]
	}
	return nil
}

// Statuses returns the observed status of endpoints by endpoint key (tenant/name), per host.
func (s *Store) Statuses(ctx context.Context) (map[string]map[string]core.EndpointStatus, error) {
	r, err := s.get(ctx, statusPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]core.EndpointStatus{}
	for _, kv := range r.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), statusPrefix)
		host, epKey, ok := strings.Cut(rest, "/")
		if !ok {
			continue
		}
		var st core.EndpointStatus
		if err := json.Unmarshal(kv.Value, &st); err != nil {
			return nil, fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		if out[epKey] == nil {
			out[epKey] = map[string]core.EndpointStatus{}
		}
		out[epKey][host] = st
	}
	return out, nil
}

// Hosts lists live hosts.
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

// Prefixes exported for watchers (the agent, benchmarks, tests).
const (
	StatusPrefix = statusPrefix
	ConfigPrefix = configPrefix
	HostPrefix   = hostPrefix
)

// DecodeHosts decodes a snapshot of HostPrefix.
func DecodeHosts(kvs map[string][]byte) ([]core.HostInfo, error) {
	out := make([]core.HostInfo, 0, len(kvs))
	for k, v := range kvs {
		var r hostRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("decode %s: %w", k, err)
		}
		out = append(out, r.HostInfo)
	}
	return out, nil
}

// Decode helpers for consumers of a Cache over ConfigPrefix.

// DecodeConfig splits a config snapshot into networks and endpoints by key.
func DecodeConfig(kvs map[string][]byte) (map[string]core.Network, []core.Endpoint, error) {
	nets := map[string]core.Network{}
	var eps []core.Endpoint
	for k, v := range kvs {
		switch {
		case strings.HasPrefix(k, networkPrefix):
			var n core.Network
			if err := json.Unmarshal(v, &n); err != nil {
				return nil, nil, fmt.Errorf("decode %s: %w", k, err)
			}
			nets[n.Key()] = n
		case strings.HasPrefix(k, endpointPrefix):
			var e core.Endpoint
			if err := json.Unmarshal(v, &e); err != nil {
				return nil, nil, fmt.Errorf("decode %s: %w", k, err)
			}
			eps = append(eps, e)
		}
	}
	return nets, eps, nil
}
