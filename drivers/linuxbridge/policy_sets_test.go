package linuxbridge

import (
	"math/rand"
	"testing"

	"github.com/netplugin/netplugin/core"
)

// The flattened boxes are disjoint and allow exactly what first match over
// the rules allows, on random rules over a small address space.
func TestAllowBoxesFirstMatch(t *testing.T) {
	rnd := rand.New(rand.NewSource(7))
	base := core.IPToUint([]byte{10, 0, 0, 0})
	members := map[string][]uint32{"g1": {base + 1, base + 2, base + 3, base + 9}, "g2": {base + 5, base + 200}}
	cidrs := []string{"10.0.0.0/28", "10.0.0.0/24", "10.0.0.128/25", "10.0.0.4/30"}
	for iter := 0; iter < 500; iter++ {
		var rules []core.CompiledRule
		for i := 0; i < 1+rnd.Intn(8); i++ {
			r := core.CompiledRule{Priority: 100 - i, Allow: rnd.Intn(2) == 0}
			switch rnd.Intn(3) {
			case 0:
				r.PeerGroup = []string{"g1", "g2"}[rnd.Intn(2)]
			case 1:
				r.PeerNets = []string{cidrs[rnd.Intn(len(cidrs))]}
			}
			switch rnd.Intn(3) {
			case 0:
				r.Proto = 6
				lo := 1 + rnd.Intn(100)
				r.Ports = core.PortRange{Lo: lo, Hi: lo + rnd.Intn(50)}
			case 1:
				r.Proto = []int{1, 17}[rnd.Intn(2)]
			}
			rules = append(rules, r)
		}
		boxes := allowBoxes(rules, members)
		for i := range boxes {
			for j := i + 1; j < len(boxes); j++ {
				if boxes[i].overlaps(boxes[j]) {
					t.Fatalf("boxes %v and %v overlap", boxes[i].element(), boxes[j].element())
				}
			}
		}
		for k := 0; k < 400; k++ {
			ip := base + uint32(rnd.Intn(256))
			proto := []int{1, 6, 17}[rnd.Intn(3)]
			port := rnd.Intn(160)
			pt := box{{ip, ip}, {uint32(proto), uint32(proto)}, {uint32(port), uint32(port)}}
			in := false
			for _, b := range boxes {
				in = in || b.overlaps(pt)
			}
			want := false
			for _, r := range rules {
				if matchRule(r, ip, proto, port, members) {
					want = r.Allow
					break
				}
			}
			if in != want {
				t.Fatalf("iteration %d: %s proto %d port %d: in boxes %v, first match %v\nrules %+v\nboxes %v", iter, core.IPFromUint(ip), proto, port, in, want, rules, boxes)
			}
		}
	}
}

func matchRule(r core.CompiledRule, ip uint32, proto, port int, members map[string][]uint32) bool {
	for _, b := range ruleBoxes(r, members) {
		if b.overlaps(box{{ip, ip}, {uint32(proto), uint32(proto)}, {uint32(port), uint32(port)}}) {
			return true
		}
	}
	return false
}
