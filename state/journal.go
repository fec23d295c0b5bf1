package state

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
)

// A document is larger than one etcd transaction (128 operations on a default
// cluster), so an apply is journaled:
//
//  1. The whole plan — every key with the state it expects and the state it
//     replaces — is written in one transaction, with a progress counter and an
//     owner key on the applier's lease, and only if nothing under config/,
//     alloc/, docker/, dockerusers/ and index/ changed since the plan was read.
//  2. While the journal exists, every other writer of desired state waits
//     (fencedTxn): the plan's allocations cannot be taken from under it.
//  3. Each batch commits with its preconditions and advances the counter in
//     the same transaction, and only from the counter's expected value, so a
//     batch replayed after a lost reply is a no-op, never a second write.
//  4. The last step deletes the journal. If a precondition fails (the store
//     changed between the plan and the journal), the batches done are undone
//     in reverse, and the store is as it was.
//
// An applier that dies leaves the journal; its owner key goes with its lease,
// and the next writer (any netdcli write, any -cfg, the Docker plugin) completes
// the journal before doing anything else.
const (
	applyPrefix = Prefix + "apply/"
	journalKey  = applyPrefix + "journal"
	progressKey = applyPrefix + "progress"
	ownerKey    = applyPrefix + "owner"
)

// maxJournalBytes keeps the journal's transaction under etcd's default
// --max-request-bytes (1.5 MiB).
const maxJournalBytes = 1400 << 10

// applyWait bounds how long a writer waits for a live apply to finish.
const applyWait = 60 * time.Second

type journal struct {
	ID      string        `json:"id"`
	By      string        `json:"by"`
	Started time.Time     `json:"started"`
	Batches [][]journalOp `json:"batches"`
}

func encodeJournal(j journal) ([]byte, error) {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if err := json.NewEncoder(zw).Encode(j); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func decodeJournal(b []byte) (journal, error) {
	var j journal
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return j, fmt.Errorf("decode apply journal: %w", err)
	}
	if err := json.NewDecoder(io.LimitReader(zr, 256<<20)).Decode(&j); err != nil {
		return j, fmt.Errorf("decode apply journal: %w", err)
	}
	return j, nil
}

// progress is the journal's counter: batches done going forward, or batches
// still to undo going back.
type progress struct {
	id   string
	back bool
	n    int
}

func (p progress) String() string {
	dir := "fwd"
	if p.back {
		dir = "back"
	}
	return p.id + " " + dir + " " + strconv.Itoa(p.n)
}

func parseProgress(s string) (progress, error) {
	f := strings.Fields(s)
	if len(f) != 3 || (f[1] != "fwd" && f[1] != "back") {
		return progress{}, fmt.Errorf("apply journal progress %q is malformed", s)
	}
	n, err := strconv.Atoi(f[2])
	if err != nil || n < 0 {
		return progress{}, fmt.Errorf("apply journal progress %q is malformed", s)
	}
	return progress{id: f[0], back: f[1] == "back", n: n}, nil
}

func (op journalOp) cmp() clientv3.Cmp {
	switch {
	case !op.Had:
		return free(op.Key)
	case op.Rev > 0:
		return unchanged(op.Key, op.Rev)
	default:
		return clientv3.Compare(clientv3.Value(op.Key), "=", op.Old)
	}
}

func (op journalOp) forward() clientv3.Op {
	if op.Del {
		return clientv3.OpDelete(op.Key)
	}
	return clientv3.OpPut(op.Key, op.Val)
}

func (op journalOp) undo() clientv3.Op {
	if op.Had {
		return clientv3.OpPut(op.Key, op.Old)
	}
	return clientv3.OpDelete(op.Key)
}

// rawTxn is one etcd transaction, with an else branch.
func (s *Store) rawTxn(ctx context.Context, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	r, err := s.cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
	return r, wrapErr(err)
}

// fencedTxn is the transaction of every writer of desired state: it commits
// only while no apply journal exists, and otherwise waits for the apply to end
// (or completes an abandoned one) and tries again, so that the caller never
// sees the fence, only a store in which the document is applied.
func (s *Store) fencedTxn(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	if !writesDesiredState(ops) {
		return s.rawTxn(ctx, cmps, ops, nil)
	}
	fenced := append(cmps[:len(cmps):len(cmps)], free(journalKey))
	probe := []clientv3.Op{clientv3.OpGet(journalKey, clientv3.WithCountOnly())}
	for {
		r, err := s.rawTxn(ctx, fenced, ops, probe)
		if err != nil || r.Succeeded {
			return r, err
		}
		if len(r.Responses) == 0 || r.Responses[0].GetResponseRange().Count == 0 {
			return r, nil // the caller's own compare failed
		}
		if err := s.ResumeApply(ctx); err != nil {
			return nil, err
		}
	}
}

// desiredPrefixes hold the desired state and its allocations: what a plan is
// made from, what the fence guards.
var desiredPrefixes = [...]string{configPrefix, allocPrefix, dockerPrefix, usersPrefix, indexPrefix}

func writesDesiredState(ops []clientv3.Op) bool {
	for _, op := range ops {
		if op.IsTxn() {
			_, then, els := op.Txn()
			if writesDesiredState(then) || writesDesiredState(els) {
				return true
			}
			continue
		}
		k := string(op.KeyBytes())
		for _, p := range desiredPrefixes {
			if strings.HasPrefix(k, p) {
				return true
			}
		}
	}
	return false
}

// ResumeApply returns once no apply journal holds the store: it waits for a
// live apply to finish, and completes (or rolls back) one whose applier died.
// netdcli calls it before every write; the agent may call it on start.
func (s *Store) ResumeApply(ctx context.Context) error {
	return s.settle(ctx, ApplyOptions{})
}

func (s *Store) settle(ctx context.Context, o ApplyOptions) error {
	deadline := time.Now().Add(applyWait)
	for {
		r, err := s.get(ctx, applyPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		var hasJournal, hasOwner bool
		for _, kv := range r.Kvs {
			hasJournal = hasJournal || string(kv.Key) == journalKey
			hasOwner = hasOwner || string(kv.Key) == ownerKey
		}
		switch {
		case !hasJournal:
			return nil
		case !hasOwner:
			err := s.takeOver(ctx, o)
			if err == nil || errors.Is(err, errRolledBack) || errors.Is(err, errTaken) {
				continue
			}
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: a -cfg apply has held the store for over %s; try again", core.ErrUnavailable, applyWait)
		}
		select {
		case <-ctx.Done():
			return wrapErr(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var (
	errRolledBack = errors.New("rolled back")
	errTaken      = errors.New("another writer took the journal over")
)

// takeOver becomes the owner of an abandoned journal and finishes it.
func (s *Store) takeOver(ctx context.Context, o ApplyOptions) error {
	r, err := s.get(ctx, applyPrefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	var jb []byte
	var prog string
	for _, kv := range r.Kvs {
		switch string(kv.Key) {
		case journalKey:
			jb = kv.Value
		case progressKey:
			prog = string(kv.Value)
		}
	}
	if jb == nil {
		return nil
	}
	j, err := decodeJournal(jb)
	if err != nil {
		return err
	}
	pr, err := parseProgress(prog)
	if err != nil || pr.id != j.ID {
		return fmt.Errorf("apply journal %s: progress %q does not belong to it", j.ID, prog)
	}
	lease, err := s.newOwner(ctx, o)
	if err != nil {
		return err
	}
	defer lease.release(s)
	tr, err := s.rawTxn(ctx, []clientv3.Cmp{free(ownerKey), clientv3.Compare(clientv3.Value(progressKey), "=", prog)},
		[]clientv3.Op{clientv3.OpPut(ownerKey, j.ID, clientv3.WithLease(lease.id))}, nil)
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return errTaken
	}
	s.log.WithField("journal", j.ID).WithField("by", j.By).WithField("progress", pr.String()).
		Warn("completing an interrupted -cfg apply")
	return s.runJournal(ctx, j, pr, o)
}

type ownerLease struct {
	id   clientv3.LeaseID
	stop context.CancelFunc
}

// newOwner grants the lease an applier holds its journal under: when the
// applier dies, the owner key goes and others may complete the journal.
func (s *Store) newOwner(ctx context.Context, o ApplyOptions) (*ownerLease, error) {
	ttl := o.OwnerTTL
	if ttl <= 0 {
		ttl = 5 * time.Second
	}
	gctx, cancel := s.op(ctx)
	r, err := s.cli.Grant(gctx, int64((ttl+time.Second-1)/time.Second))
	cancel()
	if err != nil {
		return nil, wrapErr(err)
	}
	kctx, stop := context.WithCancel(ctx)
	ch, err := s.cli.KeepAlive(kctx, r.ID)
	if err != nil {
		stop()
		return nil, wrapErr(err)
	}
	// The client needs its keepalive replies read.
	go func() {
		for range ch {
		}
	}()
	return &ownerLease{id: r.ID, stop: stop}, nil
}

// release revokes the lease; if etcd is unreachable it expires by itself.
func (l *ownerLease) release(s *Store) {
	l.stop()
	ctx, cancel := context.WithTimeout(context.Background(), min(s.opTimeout, 2*time.Second))
	defer cancel()
	_, _ = s.cli.Revoke(ctx, l.id)
}

func newJournalID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func applierName() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s pid %d", h, os.Getpid())
}

// writeJournal is the commit point of an apply: the journal, its counter and
// its owner, only if nothing the plan was made from has changed since.
func (s *Store) writeJournal(ctx context.Context, j journal, snapRev int64, lease *ownerLease) (bool, error) {
	b, err := encodeJournal(j)
	if err != nil {
		return false, err
	}
	if len(b) > maxJournalBytes {
		return false, fmt.Errorf("%w: the document changes too much to apply atomically (journal of %d KiB, etcd takes %d KiB); split it",
			core.ErrInvalid, len(b)>>10, maxJournalBytes>>10)
	}
	unchangedSince := func(prefix string) clientv3.Cmp {
		return clientv3.Compare(clientv3.ModRevision(prefix), "<", snapRev+1).WithPrefix()
	}
	cmps := []clientv3.Cmp{free(journalKey)}
	for _, p := range desiredPrefixes {
		cmps = append(cmps, unchangedSince(p))
	}
	r, err := s.rawTxn(ctx, cmps,
		[]clientv3.Op{clientv3.OpPut(journalKey, string(b)), clientv3.OpPut(progressKey, progress{id: j.ID}.String()),
			clientv3.OpPut(ownerKey, j.ID, clientv3.WithLease(lease.id))}, nil)
	if err != nil {
		return false, err
	}
	return r.Succeeded, nil
}

// runJournal writes the journal's batches from pr on, or undoes them, and
// deletes the journal at the end. It returns errRolledBack (wrapped with the
// reason) when it undid the apply.
func (s *Store) runJournal(ctx context.Context, j journal, pr progress, o ApplyOptions) error {
	var why error
	for {
		cur := pr.String()
		atCur := clientv3.Compare(clientv3.Value(progressKey), "=", cur)
		if (!pr.back && pr.n == len(j.Batches)) || (pr.back && pr.n == 0) {
			o.hook("end")
			r, err := s.rawTxn(ctx, []clientv3.Cmp{atCur},
				[]clientv3.Op{clientv3.OpDelete(journalKey), clientv3.OpDelete(progressKey), clientv3.OpDelete(ownerKey)}, nil)
			if err != nil {
				return err
			}
			if !r.Succeeded {
				return s.progressMoved(ctx, j)
			}
			o.hook("done")
			if pr.back {
				if why == nil {
					why = errors.New("an interrupted apply was rolled back")
				}
				return fmt.Errorf("%w: %w", errRolledBack, why)
			}
			return nil
		}
		cmps := []clientv3.Cmp{atCur}
		var ops []clientv3.Op
		next := pr
		if pr.back {
			b := j.Batches[pr.n-1]
			for i := len(b) - 1; i >= 0; i-- {
				if !b[i].Guard {
					ops = append(ops, b[i].undo())
				}
			}
			next.n--
		} else {
			for _, op := range j.Batches[pr.n] {
				cmps = append(cmps, op.cmp())
				if !op.Guard {
					ops = append(ops, op.forward())
				}
			}
			next.n++
		}
		ops = append(ops, clientv3.OpPut(progressKey, next.String()))
		r, err := s.rawTxn(ctx, cmps, ops, []clientv3.Op{clientv3.OpGet(progressKey)})
		if err != nil {
			return err
		}
		if r.Succeeded {
			if pr.back {
				o.hook(fmt.Sprintf("undo %d", next.n))
			} else {
				o.hook(fmt.Sprintf("batch %d", pr.n))
			}
			pr = next
			continue
		}
		got := ""
		if rr := r.Responses[0].GetResponseRange(); rr != nil && len(rr.Kvs) > 0 {
			got = string(rr.Kvs[0].Value)
		}
		if got != cur {
			// Another writer moved the journal on (it took over from us, or
			// we from it while it still ran): follow the counter.
			if got == "" {
				return nil // finished by the other
			}
			if pr, err = parseProgress(got); err != nil || pr.id != j.ID {
				return errTaken
			}
			continue
		}
		// A precondition failed: the store changed between the plan and the
		// journal. Undo what was done.
		why = s.whyBatchFailed(ctx, j.Batches[pr.n])
		s.log.WithError(why).WithField("journal", j.ID).Warn("apply conflicts with the store; rolling back")
		back := progress{id: j.ID, back: true, n: pr.n}
		r, err = s.rawTxn(ctx, []clientv3.Cmp{atCur}, []clientv3.Op{clientv3.OpPut(progressKey, back.String())}, nil)
		if err != nil {
			return err
		}
		if r.Succeeded {
			pr = back
		}
	}
}

func (s *Store) progressMoved(ctx context.Context, j journal) error {
	r, err := s.get(ctx, progressKey)
	if err != nil {
		return err
	}
	if len(r.Kvs) == 0 {
		return nil
	}
	return errTaken
}

// whyBatchFailed names the first key of a batch that is not as planned.
func (s *Store) whyBatchFailed(ctx context.Context, b []journalOp) error {
	for _, op := range b {
		r, err := s.get(ctx, op.Key)
		if err != nil {
			return err
		}
		ok := false
		switch {
		case !op.Had:
			ok = len(r.Kvs) == 0
		case op.Rev > 0:
			ok = len(r.Kvs) == 1 && r.Kvs[0].ModRevision == op.Rev
		default:
			ok = len(r.Kvs) == 1 && string(r.Kvs[0].Value) == op.Old
		}
		if !ok {
			return fmt.Errorf("%s changed while the document was being applied", strings.TrimPrefix(op.Key, Prefix))
		}
	}
	return errors.New("the store changed while the document was being applied")
}

// pendingJournal reads an unfinished journal, for a dry run: the batches not
// yet done, and a line that says so.
func (s *Store) pendingJournal(ctx context.Context) ([][]journalOp, string, error) {
	r, err := s.get(ctx, applyPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, "", err
	}
	var jb []byte
	var prog string
	for _, kv := range r.Kvs {
		switch string(kv.Key) {
		case journalKey:
			jb = kv.Value
		case progressKey:
			prog = string(kv.Value)
		}
	}
	if jb == nil {
		return nil, "", nil
	}
	j, err := decodeJournal(jb)
	if err != nil {
		return nil, "", err
	}
	pr, err := parseProgress(prog)
	if err != nil {
		return nil, "", err
	}
	if pr.back {
		return nil, fmt.Sprintf("an apply by %s (started %s) is being rolled back: %d of %d batches to undo",
			j.By, j.Started.Format(time.RFC3339), pr.n, len(j.Batches)), nil
	}
	return j.Batches[min(pr.n, len(j.Batches)):], fmt.Sprintf("an apply by %s (started %s) is not finished: %d of %d batches written; it is completed first",
		j.By, j.Started.Format(time.RFC3339), pr.n, len(j.Batches)), nil
}

// replay applies batches to a snapshot in memory, as the journal would.
func replay(snap *snapshot, batches [][]journalOp) {
	for _, b := range batches {
		for _, op := range b {
			switch {
			case op.Guard:
			case op.Del:
				delete(snap.kvs, op.Key)
			default:
				snap.kvs[op.Key] = snapKV{val: op.Val, rev: snap.rev + 1}
			}
		}
	}
}
