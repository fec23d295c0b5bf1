package state

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyCluster names the store: an agent programmed from one store and pointed
// at another (or at an empty one) must not take that store's desired state,
// least of all an empty one, for its own and wipe its host. It lives under
// config/ so that the agent's mirror of the desired state carries it.
const keyCluster = configPrefix + "cluster"

// ClusterKey is keyCluster for watchers of ConfigPrefix.
const ClusterKey = keyCluster

type clusterRecord struct {
	ID      string `json:"id"`
	Created string `json:"created"`
}

// ClusterID returns the store's ID, creating it when the store has none yet
// (a fresh cluster): whoever writes first names it, everyone agrees after.
func (s *Store) ClusterID(ctx context.Context) (string, error) {
	r, err := s.get(ctx, keyCluster)
	if err != nil {
		return "", err
	}
	if len(r.Kvs) == 1 {
		return DecodeClusterID(r.Kvs[0].Value)
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	rec := clusterRecord{ID: hex.EncodeToString(b), Created: time.Now().UTC().Format(time.RFC3339)}
	tr, err := s.txn(ctx, []clientv3.Cmp{free(keyCluster)}, clientv3.OpPut(keyCluster, mustJSON(rec)))
	if err != nil {
		return "", err
	}
	if !tr.Succeeded { // created concurrently: take theirs
		return s.ClusterID(ctx)
	}
	return rec.ID, nil
}

// ReadClusterID reads the store's ID as it is now (linearizable), creating
// none: "" when the store has none.
func (s *Store) ReadClusterID(ctx context.Context) (string, error) {
	r, err := s.get(ctx, keyCluster)
	if err != nil || len(r.Kvs) == 0 {
		return "", err
	}
	return DecodeClusterID(r.Kvs[0].Value)
}

// DecodeClusterID reads the value of ClusterKey.
func DecodeClusterID(v []byte) (string, error) {
	var rec clusterRecord
	if err := json.Unmarshal(v, &rec); err != nil || rec.ID == "" {
		return "", fmt.Errorf("decode cluster ID %q: %w", v, err)
	}
	return rec.ID, nil
}
