package ovs

import (
	"math/rand"
	"strconv"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/core"
)

// The value/mask pairs of a port range match exactly the ports in it.
func TestPortMasks(t *testing.T) {
	rnd := rand.New(rand.NewSource(3))
	ranges := [][2]int{{1, 65535}, {80, 80}, {1000, 2000}, {65535, 65535}, {1, 1}, {32768, 65535}}
	for i := 0; i < 200; i++ {
		lo := 1 + rnd.Intn(65535)
		ranges = append(ranges, [2]int{lo, lo + rnd.Intn(65536-lo)})
	}
	for _, r := range ranges {
		type vm struct{ v, m int }
		var ms []vm
		for _, s := range portMasks(r[0], r[1]) {
			v, m, ok := strings.Cut(s, "/")
			x, _ := strconv.ParseInt(v, 0, 32)
			mask := int64(0xffff)
			if ok {
				mask, _ = strconv.ParseInt(m, 0, 32)
			}
			ms = append(ms, vm{int(x), int(mask)})
		}
		for p := 0; p <= 65535; p++ {
			n := 0
			for _, x := range ms {
				if p&x.m == x.v {
					n++
				}
			}
			if in := p >= r[0] && p <= r[1]; (in && n != 1) || (!in && n != 0) {
				t.Fatalf("range %v: port %d matched by %d of %v", r, p, n, portMasks(r[0], r[1]))
			}
		}
	}
}

// A rule with several peers and several port masks becomes a conjunction
// (N + M + 2 flows); with one of either, plain flows; shared matches of two
// rules at one priority merge their conjunction actions into one flow.
func TestRuleFlows(t *testing.T) {
	p := core.HostPolicy{
		Members: map[string][]string{"t/a": {"10.0.0.1", "10.0.0.2", "10.0.0.3"}},
		Groups: map[string]core.GroupRules{
			"t/g": {In: []core.CompiledRule{
				{Priority: 10, Allow: true, PeerGroup: "t/a", Proto: core.ProtoTCP, Ports: core.PortRange{Lo: 1000, Hi: 1999}},
				{Priority: 10, Allow: true, PeerGroup: "t/a", Proto: core.ProtoUDP, Ports: core.PortRange{Lo: 53, Hi: 53}},
			}},
			"t/h": {In: []core.CompiledRule{
				{Priority: 10, Allow: true, PeerGroup: "t/a", Proto: core.ProtoTCP, Ports: core.PortRange{Lo: 80, Hi: 81}},
			}},
		},
	}
	eps := []polEndpoint{{PolicyEndpoint: core.PolicyEndpoint{Key: "t/x", Network: "t/n", IP: "10.0.0.9", MAC: "02:00:00:00:00:09", Group: "t/g"},
		port: 1000, vlan: 7, policed: true, group: 1}}
	lines := renderFlows("0x1", p, eps, nil).lines()
	var conj, udp53, peerDim []string
	for k, l := range lines {
		if !strings.HasPrefix(k, "table=4,priority=20,") {
			continue
		}
		switch {
		case strings.Contains(l, "conj_id="):
			conj = append(conj, l)
		case strings.Contains(l, "udp") && strings.Contains(l, "tp_dst=53"):
			udp53 = append(udp53, l)
		case strings.Contains(k, "nw_src=10.0.0.1") && strings.Contains(l, "conjunction("):
			peerDim = append(peerDim, l)
		}
	}
	// 1000-1999 is several masks and three peers: a conjunction; so is
	// 80-81 (one mask, but of group h: its own); udp 53 is one mask: plain.
	if len(conj) != 1 || len(udp53) != 3 {
		t.Fatalf("conjunctions %v, udp flows %v\n%v", conj, udp53, lines)
	}
	if len(peerDim) != 1 || strings.Count(peerDim[0], "conjunction(") != 1 {
		t.Fatalf("peer dimension flows: %v", peerDim)
	}
	var h []string
	for k, l := range lines {
		if strings.HasPrefix(k, "table=4,priority=20,tcp,reg2=2") || strings.HasPrefix(k, "table=4,priority=20,reg2=2") {
			h = append(h, l)
		}
	}
	if len(h) != 3 { // 80-81 is one mask: a flow per peer
		t.Fatalf("group h's flows: %v", h)
	}
}
