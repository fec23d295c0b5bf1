package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// Document is a whole desired state, as `netdcli -cfg FILE` applies it.
type Document struct {
	Global  *core.Global     `json:"global,omitempty"`
	Tenants []TenantDocument `json:"tenants"`
}

// TenantDocument is one tenant and its networks.
type TenantDocument struct {
	Name     string            `json:"name"`
	Networks []NetworkDocument `json:"networks"`
	// Policy objects (planpolicy.go).
	Policies []PolicyDocument  `json:"policies,omitempty"`
	Profiles []ProfileDocument `json:"netprofiles,omitempty"`
	Groups   []GroupDocument   `json:"groups,omitempty"`
}

// NetworkDocument is one network and its endpoints; empty fields are allocated.
type NetworkDocument struct {
	Name      string             `json:"name"`
	Driver    string             `json:"driver,omitempty"`
	TagType   string             `json:"tagType,omitempty"`
	Tag       int                `json:"tag,omitempty"`
	Subnet    string             `json:"subnet,omitempty"`
	Gateway   string             `json:"gateway,omitempty"`
	Options   map[string]string  `json:"options,omitempty"`
	Endpoints []EndpointDocument `json:"endpoints"`
}

// EndpointDocument is one endpoint; Container or NetNS attaches it.
type EndpointDocument struct {
	Name      string `json:"name"`
	IP        string `json:"ip,omitempty"`
	MAC       string `json:"mac,omitempty"`
	Host      string `json:"host,omitempty"`
	Container string `json:"container,omitempty"`
	NetNS     string `json:"netns,omitempty"`
	Group     string `json:"group,omitempty"`
}

// ParseDocument reads a document, refusing unknown fields so that a misspelt key
// is an error rather than a silently ignored setting.
func ParseDocument(r io.Reader) (Document, error) {
	var d Document
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return d, fmt.Errorf("%w: config document: %w", core.ErrInvalid, err)
	}
	return d, nil
}

// ApplySummary counts what an apply changed, and what it kept although the
// document does not name it (objects Docker made).
type ApplySummary struct {
	Created int `json:"created"`
	Updated int `json:"updated"`
	Deleted int `json:"deleted"`
	Kept    int `json:"kept"`
}

// ApplyOptions are the settings of one apply.
type ApplyOptions struct {
	// DefaultHost is the host of endpoints that name none.
	DefaultHost string
	// PruneDocker deletes networks and endpoints Docker created when the
	// document does not name them; without it they, and the tenants and
	// networks that hold them, are kept.
	PruneDocker bool
	// OwnerTTL is how long after the applier's death others wait before they
	// complete its journal (default 5s).
	OwnerTTL time.Duration
	// onStep is told about each transaction of the journal (tests).
	onStep func(step string)
}

func (o ApplyOptions) hook(step string) {
	if o.onStep != nil {
		o.onStep(step)
	}
}

// Plan is what an apply of a document would do.
type Plan struct {
	Changes []Change `json:"changes"`
	// Pending tells of an unfinished apply that is completed first; the
	// changes are planned against the store as it leaves it.
	Pending string `json:"pending,omitempty"`
	ApplySummary
}

// Apply makes the store equal to the document: objects absent from it are
// deleted (except what Docker made), new ones created, attachments updated.
func (s *Store) Apply(ctx context.Context, d Document, defaultHost string) (ApplySummary, error) {
	return s.ApplyWith(ctx, d, ApplyOptions{DefaultHost: defaultHost})
}

// ApplyWith is Apply with options. A document that fails validation changes
// nothing, and neither does one that changes nothing; any other is written
// through a journal (see journal.go), so that the store ends up with the whole
// document or, after a conflict, as it was — never with part of it.
func (s *Store) ApplyWith(ctx context.Context, d Document, o ApplyOptions) (ApplySummary, error) {
	for attempt := 0; attempt < 8; attempt++ {
		if err := s.settle(ctx, o); err != nil {
			return ApplySummary{}, err
		}
		snap, err := s.readSnapshot(ctx)
		if err != nil {
			return ApplySummary{}, err
		}
		p, err := planDocument(snap, d, o)
		if err != nil {
			return ApplySummary{}, err
		}
		sum := p.summary()
		if len(p.batches) == 0 {
			return sum, nil
		}
		err = s.applyPlan(ctx, p, snap.rev, o)
		if err == nil {
			return sum, nil
		}
		if !errors.Is(err, errConflict) && !errors.Is(err, errRolledBack) {
			return ApplySummary{}, err
		}
		s.log.WithError(err).Info("the store changed under the apply; planning again")
	}
	return ApplySummary{}, fmt.Errorf("apply: the store kept changing while the document was applied; try again")
}

var errConflict = errors.New("the store changed since the plan was read")

func (s *Store) applyPlan(ctx context.Context, p *plan, snapRev int64, o ApplyOptions) error {
	lease, err := s.newOwner(ctx, o)
	if err != nil {
		return err
	}
	defer lease.release(s)
	j := journal{ID: newJournalID(), By: applierName(), Started: time.Now().UTC(), Batches: p.batches}
	o.hook("plan")
	ok, err := s.writeJournal(ctx, j, snapRev, lease)
	if err != nil {
		return err
	}
	if !ok {
		return errConflict
	}
	o.hook("journal")
	err = s.runJournal(ctx, j, progress{id: j.ID}, o)
	if errors.Is(err, errTaken) {
		// Another writer took the journal over (we were thought dead): wait
		// for it, then plan again to see what became of the document.
		if err := s.settle(ctx, o); err != nil {
			return err
		}
		return errConflict
	}
	return err
}

// PlanApply returns what ApplyWith would do, and changes nothing.
func (s *Store) PlanApply(ctx context.Context, d Document, o ApplyOptions) (Plan, error) {
	snap, err := s.readSnapshot(ctx)
	if err != nil {
		return Plan{}, err
	}
	rest, pending, err := s.pendingJournal(ctx)
	if err != nil {
		return Plan{}, err
	}
	replay(snap, rest)
	p, err := planDocument(snap, d, o)
	if err != nil {
		return Plan{}, err
	}
	return Plan{Changes: p.changes, Pending: pending, ApplySummary: p.summary()}, nil
}

// readSnapshot reads the desired state and its allocations at one revision.
func (s *Store) readSnapshot(ctx context.Context) (*snapshot, error) {
	octx, cancel := s.op(ctx)
	defer cancel()
	var gets []clientv3.Op
	for _, p := range desiredPrefixes {
		gets = append(gets, clientv3.OpGet(p, clientv3.WithPrefix()))
	}
	r, err := s.cli.Txn(octx).Then(gets...).Commit()
	if err != nil {
		return nil, wrapErr(err)
	}
	snap := &snapshot{rev: r.Header.Revision, kvs: map[string]snapKV{}}
	for _, resp := range r.Responses {
		for _, kv := range resp.GetResponseRange().Kvs {
			snap.kvs[string(kv.Key)] = snapKV{val: string(kv.Value), rev: kv.ModRevision}
		}
	}
	return snap, nil
}
