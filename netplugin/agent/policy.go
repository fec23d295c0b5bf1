package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// policyState is what the agent last enforced, per enforcing driver, and
// what it last reported.
type policyState struct {
	gen     map[string]int64    // generation in force, by driver
	errs    map[string][]string // problems of the last compile and apply, by driver
	written string              // the status last written, as JSON
}

// enforcePolicy compiles the host's policy for driver name and hands it to
// the driver, after its endpoints were synced: a new endpoint of a group was
// held by the driver before its link came up (EnsureEndpoint sees its
// group), so it passes nothing until this policy lists it. While any range
// the policy depends on is still being listed nothing is applied: the model
// could lack a group and the policy in force, holds included, stays.
func (a *Agent) enforcePolicy(ctx context.Context, st state.HostState, model core.PolicyModel, name string, pe core.PolicyEnforcer) error {
	if st.Policy.Loading || len(st.Loading) > 0 {
		return nil
	}
	hp, cerrs := core.CompileHost(model, a.cfg.Host, name)
	msgs := make([]string, 0, len(cerrs))
	for _, e := range cerrs {
		msgs = append(msgs, e.Error())
	}
	gen, err := pe.SetPolicy(ctx, hp)
	if err != nil {
		msgs = append(msgs, err.Error())
	}
	if !slices.Equal(msgs, a.pol.errs[name]) && len(msgs) > 0 {
		a.log.WithFields(logrus.Fields{"driver": name, "generation": hp.Generation, "problems": msgs}).
			Warn("policy: groups that cannot be compiled or applied are closed")
	}
	a.pol.gen[name], a.pol.errs[name] = gen, msgs
	a.cfg.Metrics.policyGeneration.WithLabelValues(name).Set(float64(gen))
	if err != nil {
		return fmt.Errorf("policy generation %d: %w", hp.Generation, err)
	}
	return nil
}

// writePolicyStatus reports, when it changed, the generation every enforcing
// driver has in force.
func (a *Agent) writePolicyStatus(ctx context.Context, sess *state.HostSession) error {
	if len(a.pol.gen) == 0 {
		return nil
	}
	ps := state.PolicyStatus{Host: a.cfg.Host, Drivers: map[string]int64{}}
	first := true
	for name, g := range a.pol.gen {
		ps.Drivers[name] = g
		if first || g < ps.Generation {
			ps.Generation, first = g, false
		}
		ps.Errors = append(ps.Errors, a.pol.errs[name]...)
	}
	slices.Sort(ps.Errors)
	ps.Errors = slices.Compact(ps.Errors)
	b, _ := json.Marshal(ps)
	if string(b) == a.pol.written {
		return nil
	}
	if err := sess.WritePolicyStatus(ctx, ps); err != nil {
		return err
	}
	a.pol.written = string(b)
	return nil
}
