package state

import (
	"context"
	"encoding/json"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// policyStatusPrefix + <h>: the policy generation host h enforces, under its
// lease beside its endpoints' status (status/<t>/<e>/<h>), gone with it.
const policyStatusPrefix = Prefix + "policystatus/"

func policyStatusKey(h string) string { return policyStatusPrefix + h }

// PolicyStatus is what a host reports of the policy it enforces.
type PolicyStatus struct {
	Host string `json:"host"`
	// Generation is the policy generation (a store revision) every enforcing
	// driver of the host has in force: a write at or below it is enforced.
	Generation int64 `json:"generation"`
	// Drivers is the generation each enforcing driver has in force.
	Drivers map[string]int64 `json:"drivers,omitempty"`
	// Errors are the problems of the last compile or apply, one a line:
	// what they concern is closed, never opened.
	Errors []string `json:"errors,omitempty"`
}

// WritePolicyStatus publishes the host's policy status under its lease.
func (h *HostSession) WritePolicyStatus(ctx context.Context, ps PolicyStatus) error {
	ps.Host = h.host
	if _, err := h.s.txn(ctx, nil, clientv3.OpPut(policyStatusKey(h.host), mustJSON(ps), clientv3.WithLease(h.sess.Lease()))); err != nil {
		return fmt.Errorf("write policy status: %w", err)
	}
	return nil
}

// PolicyStatuses returns the policy status of the named hosts (every host's
// when none is named), by host; a host without one is missing.
func (s *Store) PolicyStatuses(ctx context.Context, hosts ...string) (map[string]PolicyStatus, error) {
	out := map[string]PolicyStatus{}
	add := func(kv *mvccpb.KeyValue) error {
		var ps PolicyStatus
		if err := json.Unmarshal(kv.Value, &ps); err != nil {
			return fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		if ps.Host == lastSegment(string(kv.Key)) {
			out[ps.Host] = ps
		}
		return nil
	}
	if len(hosts) == 0 {
		return out, s.pages(ctx, policyStatusPrefix, add)
	}
	gets := make([]clientv3.Op, len(hosts))
	for i, h := range hosts {
		gets[i] = clientv3.OpGet(policyStatusKey(h))
	}
	for len(gets) > 0 {
		n := min(len(gets), maxTxnOps)
		r, err := s.readTxn(ctx, gets[:n])
		if err != nil {
			return nil, err
		}
		for _, resp := range r.Responses {
			for _, kv := range resp.GetResponseRange().Kvs {
				if err := add(kv); err != nil {
					return nil, err
				}
			}
		}
		gets = gets[n:]
	}
	return out, nil
}
