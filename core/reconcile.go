package core

import (
	"sort"
	"strconv"
	"strings"
)

// Desired is what one host should have, per driver.
type Desired struct {
	Networks  []NetworkSpec
	Endpoints []EndpointSpec
}

// Plan is what to do to get from actual to desired. Order contract: networks are
// ensured before endpoints, and endpoints removed before networks.
type Plan struct {
	EnsureNets []NetworkSpec
	EnsureEPs  []EndpointSpec
	RemoveEPs  []ObservedEndpoint
	RemoveNets []ObservedNetwork
}

// Empty reports whether the plan does nothing.
func (p Plan) Empty() bool {
	return len(p.EnsureNets)+len(p.EnsureEPs)+len(p.RemoveEPs)+len(p.RemoveNets) == 0
}

// Reconcile computes the plan. It is pure and deterministic (sorted output).
// An endpoint whose link exists with the same fingerprint and is healthy is left
// alone: that is what makes an agent restart invisible. One whose fingerprint
// changed is removed and ensured again.
func Reconcile(d Desired, a Actual) Plan {
	var p Plan
	wantNet := map[string]bool{}
	for _, n := range d.Networks {
		wantNet[n.Key()] = true
		if o, ok := a.Networks[n.Key()]; !ok || o.Fingerprint != n.Fingerprint() {
			p.EnsureNets = append(p.EnsureNets, n)
		}
	}
	wantEP := map[string]bool{}
	for _, e := range d.Endpoints {
		wantEP[e.Key()] = true
		o, ok := a.Endpoints[e.Key()]
		switch {
		case !ok:
			p.EnsureEPs = append(p.EnsureEPs, e)
		case o.Fingerprint != e.Fingerprint():
			p.RemoveEPs = append(p.RemoveEPs, o)
			p.EnsureEPs = append(p.EnsureEPs, e)
		case !o.Healthy:
			p.EnsureEPs = append(p.EnsureEPs, e)
		}
	}
	for k, o := range a.Endpoints {
		if !wantEP[k] {
			p.RemoveEPs = append(p.RemoveEPs, o)
		}
	}
	for k, o := range a.Networks {
		if !wantNet[k] {
			p.RemoveNets = append(p.RemoveNets, o)
		}
	}
	sort.Slice(p.EnsureNets, func(i, j int) bool { return p.EnsureNets[i].Key() < p.EnsureNets[j].Key() })
	sort.Slice(p.EnsureEPs, func(i, j int) bool { return p.EnsureEPs[i].Key() < p.EnsureEPs[j].Key() })
	sort.Slice(p.RemoveEPs, func(i, j int) bool { return p.RemoveEPs[i].Key < p.RemoveEPs[j].Key })
	sort.Slice(p.RemoveNets, func(i, j int) bool { return p.RemoveNets[i].Key < p.RemoveNets[j].Key })
	return p
}

func itoa(i int) string { return strconv.Itoa(i) }

func mapString(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + "=" + m[k] + ";")
	}
	return b.String()
}
