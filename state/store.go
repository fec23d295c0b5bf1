package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/netplugin/netplugin/core"
)

// DefaultEndpoints is where netdcli and the agent look for etcd when told nothing:
// the embedded etcd a lone `netplugin` starts.
var DefaultEndpoints = []string{"127.0.0.1:2379"}

// maxTxnOps is etcd's default --max-txn-ops; batches stay under it so that a real
// cluster with default settings accepts them.
const maxTxnOps = 128

// Store is the desired and observed state in etcd.
type Store struct {
	cli *clientv3.Client
	log *logrus.Entry
	// opTimeout bounds one request so an unreachable etcd is an error, not a hang.
	opTimeout time.Duration
}

// Connect dials etcd and checks that it answers within timeout.
func Connect(ctx context.Context, endpoints []string, timeout time.Duration, log *logrus.Entry, opts ...ConnectOption) (*Store, error) {
	var o connectOpts
	for _, f := range opts {
		f(&o)
	}
	if len(endpoints) == 0 {
		endpoints = DefaultEndpoints
	}
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: timeout,
		Context:     ctx,
		Logger:      zap.NewNop(),
		// Keepalive makes a dead member noticed within seconds (at most 9 s),
		// by unary calls and by long-lived watches alike; the client then
		// moves to another. Not more often than every 5 s: etcd's default
		// --grpc-keepalive-min-time is 5 s, and a client that pings faster is
		// sent GOAWAY "too_many_pings", which drops its watches and lease
		// stream (seen with 2 s in the 1,000-agent benchmark).
		DialKeepAliveTime:    6 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		PermitWithoutStream:  true,
	}
	if !o.tls.IsZero() {
		tc, err := o.tls.Config()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", core.ErrInvalid, err)
		}
		cfg.TLS = tc
		// The scheme is the config's to decide: a user may write either form.
		cfg.Endpoints = make([]string, len(endpoints))
		for i, e := range endpoints {
			cfg.Endpoints[i] = "https://" + hostPort(e)
		}
	}
	if o.dial != nil {
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(o.dial))
	}
	where := strings.Join(endpoints, ",")
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: etcd at %s: %w", core.ErrUnavailable, where, err)
	}
	s := &Store{cli: cli, log: log, opTimeout: timeout}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A linearizable read proves a leader exists, which a bare dial does not.
	if _, err := cli.Get(cctx, keyGlobal); err != nil {
		_ = cli.Close()
		if why := probeTLS(ctx, hostPort(endpoints[0]), cfg.TLS); why != "" {
			return nil, fmt.Errorf("%w: etcd at %s refused the connection: %s", core.ErrUnavailable, where, why)
		}
		return nil, fmt.Errorf("%w: etcd at %s did not answer within %s", core.ErrUnavailable, where, timeout)
	}
	return s, nil
}

// Client exposes the etcd client to the agent's watch and lease code.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Close releases the connection.
func (s *Store) Close() error { return s.cli.Close() }

func (s *Store) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opTimeout)
}

// wrapErr turns transport failures into ErrUnavailable so callers can tell
// "etcd is down" from "your input is wrong".
func wrapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w: etcd did not answer: %w", core.ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %w", core.ErrUnavailable, err)
}

func (s *Store) get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	r, err := s.cli.Get(ctx, key, opts...)
	return r, wrapErr(err)
}

// txn commits ops if cmps hold; writes of desired state wait for a -cfg apply
// in progress (state/journal.go).
func (s *Store) txn(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	return s.fencedTxn(ctx, cmps, ops...)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", v, err)) // only plain structs are marshalled
	}
	return string(b)
}

func free(key string) clientv3.Cmp { return clientv3.Compare(clientv3.CreateRevision(key), "=", 0) }

func exists(key string) clientv3.Cmp { return clientv3.Compare(clientv3.CreateRevision(key), ">", 0) }

func unchanged(key string, modRev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", modRev)
}

// emptyPrefix holds when no key lies under prefix.
func emptyPrefix(prefix string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(prefix), "=", 0).WithPrefix()
}

// Global returns the global configuration, defaults filled in.
func (s *Store) Global(ctx context.Context) (core.Global, int64, error) {
	r, err := s.get(ctx, keyGlobal)
	if err != nil {
		return core.Global{}, 0, err
	}
	g := core.DefaultGlobal()
	if len(r.Kvs) == 0 {
		return g, 0, nil
	}
	if err := json.Unmarshal(r.Kvs[0].Value, &g); err != nil {
		return g, 0, fmt.Errorf("decode global: %w", err)
	}
	return g, r.Kvs[0].ModRevision, nil
}

// SetGlobal replaces the global configuration; empty fields keep their value.
func (s *Store) SetGlobal(ctx context.Context, g core.Global) (core.Global, error) {
	cur, rev, err := s.Global(ctx)
	if err != nil {
		return cur, err
	}
	if g.VLANs != "" {
		cur.VLANs = g.VLANs
	}
	if g.VXLANs != "" {
		cur.VXLANs = g.VXLANs
	}
	if g.DefaultDriver != "" {
		cur.DefaultDriver = g.DefaultDriver
	}
	if g.DefaultTagType != "" {
		cur.DefaultTagType = g.DefaultTagType
	}
	if g.SubnetPool != "" {
		cur.SubnetPool = g.SubnetPool
	}
	if g.SubnetLen != 0 {
		cur.SubnetLen = g.SubnetLen
	}
	if err := core.ValidateGlobal(cur); err != nil {
		return cur, err
	}
	r, err := s.txn(ctx, []clientv3.Cmp{unchanged(keyGlobal, rev)}, clientv3.OpPut(keyGlobal, mustJSON(cur)))
	if err != nil {
		return cur, err
	}
	if !r.Succeeded {
		return cur, fmt.Errorf("global configuration changed concurrently; try again")
	}
	return cur, nil
}

// CreateTenant adds a tenant.
func (s *Store) CreateTenant(ctx context.Context, name string) error {
	if err := core.ValidName("tenant", name); err != nil {
		return err
	}
	r, err := s.txn(ctx, []clientv3.Cmp{free(tenantKey(name))}, clientv3.OpPut(tenantKey(name), mustJSON(core.Tenant{Name: name})))
	if err != nil {
		return err
	}
	if !r.Succeeded {
		return fmt.Errorf("%w: tenant %q", core.ErrExists, name)
	}
	return nil
}

// DeleteTenant removes a tenant that has no networks.
func (s *Store) DeleteTenant(ctx context.Context, name string) error {
	r, err := s.txn(ctx, []clientv3.Cmp{exists(tenantKey(name)), emptyPrefix(networksOf(name)),
		emptyPrefix(policiesOf(name)), emptyPrefix(profilesOf(name))},
		clientv3.OpDelete(tenantKey(name)))
	if err != nil {
		return err
	}
	if r.Succeeded {
		return nil
	}
	if ok, err := s.has(ctx, tenantKey(name)); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("%w: tenant %q", core.ErrNotFound, name)
	}
	return fmt.Errorf("%w: tenant %q still has networks, policies or netprofiles; delete them first", core.ErrInUse, name)
}

// Tenants lists tenants by name.
func (s *Store) Tenants(ctx context.Context) ([]core.Tenant, error) {
	return list[core.Tenant](ctx, s, tenantPrefix)
}

// Tenant reads one tenant: a list of it, empty for the default tenant that
// was never written.
func (s *Store) Tenant(ctx context.Context, name string) ([]core.Tenant, error) {
	r, err := s.get(ctx, tenantKey(name))
	if err != nil {
		return nil, err
	}
	if len(r.Kvs) == 0 {
		if name == core.DefaultTenant {
			return []core.Tenant{}, nil
		}
		return nil, fmt.Errorf("%w: unknown tenant %q", core.ErrNotFound, name)
	}
	var t core.Tenant
	if err := json.Unmarshal(r.Kvs[0].Value, &t); err != nil {
		return nil, fmt.Errorf("decode %s: %w", r.Kvs[0].Key, err)
	}
	return []core.Tenant{t}, nil
}

func (s *Store) has(ctx context.Context, key string) (bool, error) {
	r, err := s.get(ctx, key, clientv3.WithCountOnly())
	if err != nil {
		return false, err
	}
	return r.Count > 0, nil
}

// tenantExists is checked by every command that names a tenant, so that a typo is
// "unknown tenant", not a silently created one. The default tenant always exists.
func (s *Store) tenantExists(ctx context.Context, t string) error {
	if t == core.DefaultTenant {
		return nil
	}
	ok, err := s.has(ctx, tenantKey(t))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: unknown tenant %q", core.ErrNotFound, t)
	}
	return nil
}

// pageSize bounds one read of a listing: a long list is read in pages, all at
// the first page's revision, never in one unbounded request.
const pageSize = 500

// pages calls fn with every key under prefix, in key order, page by page.
func (s *Store) pages(ctx context.Context, prefix string, fn func(*mvccpb.KeyValue) error, opts ...clientv3.OpOption) error {
	from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	var rev int64
	for {
		o := append([]clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}, opts...)
		if rev != 0 {
			o = append(o, clientv3.WithRev(rev))
		}
		r, err := s.get(ctx, from, o...)
		if err != nil {
			return err
		}
		rev = r.Header.Revision
		for _, kv := range r.Kvs {
			if err := fn(kv); err != nil {
				return err
			}
		}
		if !r.More || len(r.Kvs) == 0 {
			return nil
		}
		from = string(r.Kvs[len(r.Kvs)-1].Key) + "\x00"
	}
}

func list[T any](ctx context.Context, s *Store, prefix string) ([]T, error) {
	var out []T
	err := s.pages(ctx, prefix, func(kv *mvccpb.KeyValue) error {
		var v T
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		out = append(out, v)
		return nil
	})
	if out == nil {
		out = []T{}
	}
	return out, err
}

// counts returns how many keys lie under each prefix: one count-only read
// per prefix, batched.
func (s *Store) counts(ctx context.Context, prefixes []string) ([]int64, error) {
	out := make([]int64, 0, len(prefixes))
	err := s.prefixReads(ctx, prefixes, func(r *etcdserverpb.RangeResponse) error {
		out = append(out, r.Count)
		return nil
	}, clientv3.WithCountOnly())
	if err != nil {
		return nil, err
	}
	return out, nil
}

// prefixReads reads every prefix (with opts), as many per transaction as
// etcd's limit allows, and hands each answer to each in the prefixes' order.
func (s *Store) prefixReads(ctx context.Context, prefixes []string, each func(*etcdserverpb.RangeResponse) error, opts ...clientv3.OpOption) error {
	opts = append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)
	for len(prefixes) > 0 {
		n := min(len(prefixes), maxTxnOps)
		gets := make([]clientv3.Op, n)
		for i, p := range prefixes[:n] {
			gets[i] = clientv3.OpGet(p, opts...)
		}
		octx, cancel := s.op(ctx)
		r, err := s.cli.Txn(octx).Then(gets...).Commit()
		cancel()
		if err != nil {
			return wrapErr(err)
		}
		for _, resp := range r.Responses {
			if err := each(resp.GetResponseRange()); err != nil {
				return err
			}
		}
		prefixes = prefixes[n:]
	}
	return nil
}

// TenantsWith returns the tenants that have a network (kind "network") or an
// endpoint (kind "endpoint") called name: the default tenant is asked first,
// and only when it has none, every tenant, one key each in one request.
func (s *Store) TenantsWith(ctx context.Context, kind, name string) ([]string, error) {
	key := networkKey
	if kind == "endpoint" {
		key = endpointKey
	}
	if ok, err := s.has(ctx, key(core.DefaultTenant, name)); err != nil || ok {
		return []string{core.DefaultTenant}, err
	}
	ts, err := s.Tenants(ctx)
	if err != nil {
		return nil, err
	}
	var keys, names []string
	for _, t := range ts {
		if t.Name != core.DefaultTenant {
			keys, names = append(keys, key(t.Name, name)), append(names, t.Name)
		}
	}
	n, err := s.counts(ctx, keys)
	if err != nil {
		return nil, err
	}
	var out []string
	for i, c := range n {
		if c > 0 {
			out = append(out, names[i])
		}
	}
	return out, nil
}

// EndpointCounts returns how many endpoints each network (tenant/name) has,
// from the networks' indexes: one count-only read each, batched.
func (s *Store) EndpointCounts(ctx context.Context, netKeys ...string) (map[string]int, error) {
	prefixes := make([]string, len(netKeys))
	for i, nk := range netKeys {
		t, n, _ := strings.Cut(nk, "/")
		prefixes[i] = netEndpointsOf(t, n)
	}
	c, err := s.counts(ctx, prefixes)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int, len(netKeys))
	for i, nk := range netKeys {
		out[nk] = int(c[i])
	}
	return out, nil
}
