package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// What this machine remembers about its agent between runs:
//
//   - LeaseFile (under the run dir, as long-lived as the dataplane it
//     describes): the lease of the last agent of this host label, so that the
//     next one takes the host over with that very lease instead of being
//     refused as a duplicate, and peers never see the host go.
//   - ClusterFile (under the data dir, as long-lived as OVS's database): the ID
//     of the store this host was programmed from. Started against another
//     store, or an empty one, the agent does not take that store's desired
//     state for its own: it says why and waits, until the operator passes
//     --adopt-cluster.

type leaseRecord struct {
	Lease int64  `json:"lease"`
	Host  string `json:"host"`
}

func (a *Agent) prevLease() int64 {
	if a.cfg.LeaseFile == "" {
		return 0
	}
	b, err := os.ReadFile(a.cfg.LeaseFile)
	if err != nil {
		return 0
	}
	var r leaseRecord
	if json.Unmarshal(b, &r) != nil || r.Host != a.cfg.Host {
		return 0
	}
	return r.Lease
}

func (a *Agent) saveLease(lease int64) error {
	if a.cfg.LeaseFile == "" {
		return nil
	}
	b, _ := json.Marshal(leaseRecord{Lease: lease, Host: a.cfg.Host})
	return writeFileAtomic(a.cfg.LeaseFile, b)
}

func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// checkCluster compares the store's ID with the one this host was programmed
// from, and waits while they differ. A host never programmed (no file) takes
// the store's ID, as does any host started with --adopt-cluster.
func (a *Agent) checkCluster(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for {
		id, err := a.cfg.Store.ClusterID(ctx)
		if err == nil {
			a.etcdUp(true)
			stamp := ""
			if a.cfg.ClusterFile != "" {
				if b, err := os.ReadFile(a.cfg.ClusterFile); err == nil {
					stamp = strings.TrimSpace(string(b))
				}
			}
			if stamp == "" || stamp == id || a.cfg.AdoptCluster {
				if stamp != id && a.cfg.ClusterFile != "" {
					if err := writeFileAtomic(a.cfg.ClusterFile, []byte(id+"\n")); err != nil {
						return fmt.Errorf("record cluster ID: %w", err)
					}
					if stamp != "" {
						a.log.WithFields(map[string]any{"was": stamp, "now": id}).Warn("adopted another cluster (--adopt-cluster)")
					}
				}
				a.clusterID = id
				a.setProblem("")
				return nil
			}
			a.setProblem(fmt.Sprintf("this host was programmed from etcd cluster %s, but the store is cluster %s "+
				"(another or an emptied etcd): nothing is changed on this host; restart with --adopt-cluster to take the new store's state", stamp, id))
			a.log.Error(a.Problem())
			backoff = a.cfg.Resync
		} else {
			a.etcdUp(false)
			a.cfg.Metrics.etcdErrors.Inc()
			a.log.WithError(err).Warn("cannot read the cluster ID; retrying")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// mirrorIsOurs reports why the mirrored desired state must not be applied: the
// store it came from lost its cluster ID (wiped, or restored from an empty
// backup) or names another cluster. An empty but successful list must never
// wipe a host.
func (a *Agent) mirrorIsOurs(st state.HostState) error {
	if st.ClusterID == "" && st.ClusterErr == nil {
		return errors.New("the store has no cluster ID any more (emptied or replaced?): not changing anything on this host")
	}
	if st.ClusterErr != nil || st.ClusterID != a.clusterID {
		return fmt.Errorf("the store now names cluster %q, not %s: not changing anything on this host", st.ClusterID, a.clusterID)
	}
	return nil
}

// register takes this host's key, reusing the previous agent's lease. A label
// held by another agent is fatal at start (two agents must never drive one
// host's keys) and retried later, when the lease was lost to an outage.
func (a *Agent) register(ctx context.Context, first bool) (*state.HostSession, error) {
	names := make([]string, 0, len(a.cfg.Drivers))
	for n := range a.cfg.Drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	backoff := 200 * time.Millisecond
	for {
		info := core.HostInfo{Name: a.cfg.Host, VTEP: a.cfg.VTEP, Drivers: names, Started: time.Now().UTC().Format(time.RFC3339)}
		sess, err := a.cfg.Store.Register(ctx, info, a.cfg.LeaseTTL, a.prevLease())
		if err == nil {
			a.info = info
			// What a predecessor of this lease published is this agent's
			// to keep or withdraw.
			a.published = map[string]bool{}
			for _, nk := range sess.Serves() {
				a.published[nk] = true
			}
			a.inherited = map[string]bool{}
			for _, k := range sess.InheritedStatuses() {
				a.inherited[k] = true
			}
			a.etcdUp(true)
			if err := a.saveLease(sess.Lease()); err != nil {
				a.log.WithError(err).Warn("cannot record the host lease; a restart will wait for it to expire")
			}
			return sess, nil
		}
		if errors.Is(err, core.ErrInUse) {
			if first {
				return nil, err
			}
			a.setProblem(err.Error())
			a.log.WithError(err).Error("cannot take the host key back")
		} else {
			a.etcdUp(false)
			a.cfg.Metrics.etcdErrors.Inc()
			a.log.WithError(err).Warn("cannot register host; retrying")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
