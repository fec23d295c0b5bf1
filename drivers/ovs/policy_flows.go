package ovs

// The OpenFlow pipeline of policy and profiles on the integration bridge.
// Without any, the bridge has only vswitchd's own "priority=0, NORMAL" flow;
// with some, our flows (cookie policyCookie) take over table 0 and end in
// NORMAL:
//
//	0  holds (new endpoints dropped until their policy is in); from a
//	   profiled port: its DSCP
//	1  classify, on policed networks: from a listed port (checked against
//	   its MAC and address) load its group (reg0) and local VLAN (reg1) and
//	   enter conntrack in the network's zone; towards a listed MAC (from a
//	   tunnel, the uplink or another port) enter conntrack likewise
//	2  after conntrack: established and related pass; the group of a local
//	   destination is loaded (reg2)
//	3  egress rules of reg0's group (highest priority first, conjunctions
//	   for group x group x port), else drop if that group is isolated
//	4  ingress rules of reg2's group; what passes is committed
//	5  NORMAL
//
// Bandwidth is shaped by tbf qdiscs, not here (see qos.go): OpenFlow meters
// police, and a policer that holds UDP within 5% of its rate passes TCP at
// a tenth of it (measured here).

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/netplugin/netplugin/core"
)

const (
	tblHold, tblClassify, tblTracked, tblEgress, tblIngress, tblOut = 0, 1, 2, 3, 4, 5
)

// flowSet is the wanted flows by their identity ("table=..,priority=..,match"),
// with conjunction actions of identical matches merged.
type flowSet struct {
	cookie string
	flows  map[string]string   // key -> actions
	conj   map[string][]string // key -> conjunction(...) actions
	nextID int
}

func newFlowSet(cookie string) *flowSet {
	return &flowSet{cookie: cookie, flows: map[string]string{}, conj: map[string][]string{}, nextID: 1}
}

func (f *flowSet) add(table, prio int, match, actions string) {
	key := fmt.Sprintf("table=%d,priority=%d", table, prio)
	if match != "" {
		key += "," + match
	}
	f.flows[key] = actions
}

func (f *flowSet) addConj(table, prio int, match, action string) {
	key := fmt.Sprintf("table=%d,priority=%d,%s", table, prio, match)
	f.conj[key] = append(f.conj[key], action)
}

// lines returns every flow as "key -> full flow line", sorted keys. A flow
// whose match also carries conjunctions keeps its own actions: by the
// priority-tie rule it covers what they would have allowed.
func (f *flowSet) lines() map[string]string {
	out := make(map[string]string, len(f.flows)+len(f.conj))
	for k, a := range f.flows {
		out[k] = "cookie=" + f.cookie + "," + k + ",actions=" + a
	}
	for k, as := range f.conj {
		if _, ok := f.flows[k]; ok {
			continue
		}
		out[k] = "cookie=" + f.cookie + "," + k + ",actions=" + strings.Join(as, ",")
	}
	return out
}

// portMasks splits an inclusive port range into value/mask pairs.
func portMasks(lo, hi int) []string {
	var out []string
	for lo <= hi {
		size := 1
		for lo%(size*2) == 0 && lo+size*2-1 <= hi {
			size *= 2
		}
		if size == 1 {
			out = append(out, fmt.Sprint(lo))
		} else {
			out = append(out, fmt.Sprintf("0x%x/0x%x", lo, 0xffff&^(size-1)))
		}
		lo += size
		if size == 0 || lo > 65535 {
			break
		}
	}
	return out
}

// polEndpoint is a listed endpoint as the flows need it.
type polEndpoint struct {
	core.PolicyEndpoint
	port    int  // OpenFlow port; 0 unknown
	vlan    int  // local VLAN of its network; 0 unknown
	policed bool // its network is policed
	group   int  // number of its group (0 none or no rules)
}

// renderFlows builds the wanted flows for p.
func renderFlows(cookie string, p core.HostPolicy, eps []polEndpoint, held map[string]heldPort) *flowSet {
	f := newFlowSet(cookie)
	if len(eps) == 0 && len(held) == 0 {
		return f
	}
	for _, k := range slices.Sorted(maps.Keys(held)) {
		h := held[k]
		if h.port > 0 {
			f.add(tblHold, 300, fmt.Sprintf("in_port=%d", h.port), "drop")
		}
		f.add(tblHold, 300, "dl_dst="+h.mac, "drop")
	}
	f.add(tblHold, 1, "", fmt.Sprintf("resubmit(,%d)", tblClassify))
	f.add(tblClassify, 0, "", fmt.Sprintf("resubmit(,%d)", tblOut))
	f.add(tblOut, 0, "", "NORMAL")
	anyPoliced := false
	for _, e := range eps {
		if q := e.QoS; q != nil && e.port > 0 && q.DSCP >= 0 {
			f.add(tblHold, 200, fmt.Sprintf("in_port=%d,ip", e.port), fmt.Sprintf("set_field:%d->ip_dscp,resubmit(,%d)", q.DSCP, tblClassify))
		}
		if !e.policed || e.vlan == 0 {
			continue
		}
		anyPoliced = true
		ct := fmt.Sprintf("load:%d->NXM_NX_REG0[],load:%d->NXM_NX_REG1[],ct(table=%d,zone=%d)", e.group, e.vlan, tblTracked, e.vlan)
		if e.port > 0 {
			f.add(tblClassify, 200, fmt.Sprintf("in_port=%d,dl_src=%s,ip,nw_src=%s", e.port, e.MAC, e.IP), ct)
			f.add(tblClassify, 200, fmt.Sprintf("in_port=%d,dl_src=%s,arp,arp_spa=%s", e.port, e.MAC, e.IP), fmt.Sprintf("resubmit(,%d)", tblOut))
			if e.group > 0 {
				f.add(tblClassify, 199, fmt.Sprintf("in_port=%d", e.port), "drop")
			} else {
				f.add(tblClassify, 199, fmt.Sprintf("in_port=%d,ip", e.port), "drop") // another endpoint's address
			}
		}
		f.add(tblClassify, 150, "ip,dl_dst="+e.MAC, fmt.Sprintf("load:0->NXM_NX_REG0[],load:%d->NXM_NX_REG1[],ct(table=%d,zone=%d)", e.vlan, tblTracked, e.vlan))
		if e.group > 0 {
			f.add(tblClassify, 149, "arp,dl_dst="+e.MAC, fmt.Sprintf("resubmit(,%d)", tblOut))
			f.add(tblClassify, 148, "dl_dst="+e.MAC, "drop")
			// From its MAC but not through its port (not attached yet, or
			// numbered otherwise): closed.
			f.add(tblClassify, 140, "dl_src="+e.MAC, "drop")
			f.add(tblTracked, 100, fmt.Sprintf("ct_state=+new+trk,reg1=%d,dl_dst=%s", e.vlan, e.MAC),
				fmt.Sprintf("load:%d->NXM_NX_REG2[],resubmit(,%d)", e.group, tblEgress))
			f.add(tblTracked, 100, fmt.Sprintf("ct_state=+inv+trk,reg1=%d,dl_dst=%s", e.vlan, e.MAC),
				fmt.Sprintf("load:%d->NXM_NX_REG2[],resubmit(,%d)", e.group, tblEgress))
		}
	}
	if !anyPoliced {
		return f
	}
	commit := fmt.Sprintf("ct(commit,zone=NXM_NX_REG1[0..15]),resubmit(,%d)", tblOut)
	f.add(tblTracked, 200, "ct_state=+est+trk", fmt.Sprintf("resubmit(,%d)", tblOut))
	f.add(tblTracked, 200, "ct_state=+rel+trk", fmt.Sprintf("resubmit(,%d)", tblOut))
	f.add(tblTracked, 10, "", fmt.Sprintf("resubmit(,%d)", tblEgress))
	f.add(tblEgress, 0, "", fmt.Sprintf("resubmit(,%d)", tblIngress))
	f.add(tblIngress, 5, "ct_state=+inv+trk", fmt.Sprintf("resubmit(,%d)", tblOut)) // not ours to judge: as before
	// TCP picked up mid-stream (its entry cut, or lost with vswitchd) that
	// no rule judges passes, but is not committed: committed, the entry
	// would let the other end's segments in as replies, and a server that
	// spoke first after its client's allow was withdrawn would reopen the
	// connection that the withdrawal cut.
	f.add(tblIngress, 5, "ct_state=+new+trk,tcp,tcp_flags=-syn", fmt.Sprintf("resubmit(,%d)", tblOut))
	f.add(tblIngress, 0, "ip", commit)

	members := map[string][]string{}
	for g, ips := range p.Members {
		members[g] = ips
	}
	num := groupNumbers(p)
	for _, g := range slices.Sorted(maps.Keys(p.Groups)) {
		r := p.Groups[g]
		for _, dir := range []struct {
			table       int
			reg, peer   string
			rules       []core.CompiledRule
			allowAction string
		}{
			{tblEgress, "reg0", "nw_dst", r.Out, fmt.Sprintf("resubmit(,%d)", tblIngress)},
			{tblIngress, "reg2", "nw_src", r.In, commit},
		} {
			if len(dir.rules) == 0 {
				continue
			}
			self := fmt.Sprintf("%s=%d", dir.reg, num[g])
			// What the group's rules judge must be new, and a new TCP
			// connection starts with a SYN (so that one cut from conntrack
			// stays cut).
			f.add(dir.table, 250, self+",ct_state=+inv+trk", "drop")
			f.add(dir.table, 250, self+",ct_state=+new+trk,tcp,tcp_flags=-syn", "drop")
			f.add(dir.table, 250, self+",ct_state=+new+trk,tcp,tcp_flags=+ack", "drop")
			f.add(dir.table, 1, self, "drop")
			for _, c := range dir.rules {
				action := "drop"
				if c.Allow {
					action = dir.allowAction
				}
				f.addRule(dir.table, 10+c.Priority, self, dir.peer, c, members, action)
			}
		}
	}
	return f
}

// groupNumbers numbers the groups with rules, from 1, in key order.
func groupNumbers(p core.HostPolicy) map[string]int {
	num := map[string]int{}
	for i, g := range slices.Sorted(maps.Keys(p.Groups)) {
		num[g] = i + 1
	}
	return num
}

// addRule adds the flows of one rule: a flow per combination when at most
// one dimension has several values, else a conjunction (N + M + 2 flows,
// not N x M).
func (f *flowSet) addRule(table, prio int, self, peerField string, c core.CompiledRule, members map[string][]string, action string) {
	var peers []string
	switch {
	case c.PeerGroup != "":
		for _, ip := range members[c.PeerGroup] {
			peers = append(peers, peerField+"="+ip)
		}
		if len(peers) == 0 {
			return // a group without members matches nothing
		}
	case len(c.PeerNets) > 0:
		for _, n := range c.PeerNets {
			peers = append(peers, peerField+"="+n)
		}
	}
	var l4 []string
	proto := "ip"
	switch {
	case c.Proto == core.ProtoTCP || c.Proto == core.ProtoUDP:
		proto = map[int]string{core.ProtoTCP: "tcp", core.ProtoUDP: "udp"}[c.Proto]
		if !c.Ports.Any() {
			for _, m := range portMasks(c.Ports.Lo, c.Ports.Hi) {
				l4 = append(l4, proto+",tp_dst="+m)
			}
		}
	case c.Proto == core.ProtoICMP:
		proto = "icmp"
	case c.Proto != 0:
		proto = fmt.Sprintf("ip,nw_proto=%d", c.Proto)
	}
	if len(l4) == 0 {
		l4 = []string{proto}
	}
	if len(peers) == 0 {
		peers = []string{""}
	}
	if len(peers) == 1 || len(l4) == 1 {
		for _, p := range peers {
			for _, m := range l4 {
				match := self + "," + m
				if p != "" {
					match += "," + p
				}
				f.add(table, prio, match, action)
			}
		}
		return
	}
	id := f.nextID + table<<24
	f.nextID++
	f.addConj(table, prio, self+",ip", fmt.Sprintf("conjunction(%d,1/3)", id))
	for _, p := range peers {
		f.addConj(table, prio, "ip,"+p, fmt.Sprintf("conjunction(%d,2/3)", id))
	}
	for _, m := range l4 {
		f.addConj(table, prio, m, fmt.Sprintf("conjunction(%d,3/3)", id))
	}
	f.add(table, prio, fmt.Sprintf("conj_id=%d,ip", id), action)
}
