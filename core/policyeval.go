package core

import (
	"fmt"
	"net"
)

// PolicyEval answers from a HostPolicy whether the host lets a new
// connection pass: what a driver asks of every tracked connection after an
// update, to cut those whose allow was withdrawn.
type PolicyEval struct {
	local   map[string]map[uint32]string // network -> IP -> group key ("" for none)
	groups  map[string]GroupRules
	members map[string]map[uint32]bool
	nets    map[string][]*net.IPNet // CIDR -> parsed (cache)
}

// NewPolicyEval indexes p.
func NewPolicyEval(p HostPolicy) *PolicyEval {
	e := &PolicyEval{local: map[string]map[uint32]string{}, groups: p.Groups, members: map[string]map[uint32]bool{}, nets: map[string][]*net.IPNet{}}
	for _, ep := range p.Endpoints {
		ip, err := ParseIPv4(ep.IP)
		if err != nil {
			continue
		}
		if e.local[ep.Network] == nil {
			e.local[ep.Network] = map[uint32]string{}
		}
		e.local[ep.Network][IPToUint(ip)] = ep.Group
	}
	for g, ips := range p.Members {
		m := map[uint32]bool{}
		for _, s := range ips {
			if ip, err := ParseIPv4(s); err == nil {
				m[IPToUint(ip)] = true
			}
		}
		e.members[g] = m
	}
	return e
}

// Allows reports whether a new connection on network from src to dst with
// protocol proto and destination port passes this host: the egress rules of
// src's group when src is a local endpoint, and the ingress rules of dst's
// group when dst is one. Traffic of which neither end is local is not this
// host's to judge and passes.
func (e *PolicyEval) Allows(network string, src, dst net.IP, proto, port int) bool {
	s, d := src.To4(), dst.To4()
	if s == nil || d == nil {
		return true
	}
	su, du := IPToUint(s), IPToUint(d)
	if g, ok := e.local[network][su]; ok && g != "" {
		if r, ok := e.groups[g]; ok && !e.decide(r.Out, du, proto, port) {
			return false
		}
	}
	if g, ok := e.local[network][du]; ok && g != "" {
		if r, ok := e.groups[g]; ok && !e.decide(r.In, su, proto, port) {
			return false
		}
	}
	return true
}

// decide is first match over rules (highest priority first); no rules: open;
// rules but no match: closed.
func (e *PolicyEval) decide(rules []CompiledRule, peer uint32, proto, port int) bool {
	if len(rules) == 0 {
		return true
	}
	for _, r := range rules {
		if e.matches(r, peer, proto, port) {
			return r.Allow
		}
	}
	return false
}

func (e *PolicyEval) matches(r CompiledRule, peer uint32, proto, port int) bool {
	if r.Proto != 0 && r.Proto != proto {
		return false
	}
	if !r.Ports.Any() && (port < r.Ports.Lo || port > r.Ports.Hi) {
		return false
	}
	if r.PeerGroup != "" {
		return e.members[r.PeerGroup][peer]
	}
	if len(r.PeerNets) == 0 {
		return true
	}
	ip := IPFromUint(peer)
	for _, c := range r.PeerNets {
		nets, ok := e.nets[c]
		if !ok {
			if _, sn, err := net.ParseCIDR(c); err == nil {
				nets = []*net.IPNet{sn}
			}
			e.nets[c] = nets
		}
		for _, sn := range nets {
			if sn.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// ValidateHostPolicy checks what a driver is given before it changes
// anything: addresses, CIDRs, ports and references. CompileHost only makes
// valid ones; a driver refuses any other whole, so that a bad input never
// half-applies (nor drops an endpoint from its policy, which would open it).
func ValidateHostPolicy(p HostPolicy) error {
	nets := map[string]bool{}
	for _, n := range p.Networks {
		if _, err := ParseCIDR(n.Subnet); err != nil {
			return fmt.Errorf("host policy: network %s: %w", n.Key, err)
		}
		nets[n.Key] = true
	}
	seen := map[string]bool{}
	for _, e := range p.Endpoints {
		if !nets[e.Network] {
			return fmt.Errorf("%w: host policy: endpoint %s: network %s is not listed", ErrInvalid, e.Key, e.Network)
		}
		if seen[e.Key] {
			return fmt.Errorf("%w: host policy: endpoint %s listed twice", ErrInvalid, e.Key)
		}
		seen[e.Key] = true
		if _, err := ParseIPv4(e.IP); err != nil {
			return fmt.Errorf("host policy: endpoint %s: %w", e.Key, err)
		}
		if _, err := net.ParseMAC(e.MAC); err != nil {
			return fmt.Errorf("%w: host policy: endpoint %s: MAC %q", ErrInvalid, e.Key, e.MAC)
		}
		if q := e.QoS; q != nil && (q.DSCP < -1 || q.DSCP > MaxDSCP || q.RateIn > MaxRate || q.RateOut > MaxRate ||
			(q.RateIn > 0 && q.RateIn < MinRate) || (q.RateOut > 0 && q.RateOut < MinRate) || q.Burst > MaxBurst) {
			return fmt.Errorf("%w: host policy: endpoint %s: QoS %+v out of range", ErrInvalid, e.Key, *q)
		}
	}
	for g, r := range p.Groups {
		for _, c := range append(append([]CompiledRule(nil), r.In...), r.Out...) {
			if c.Priority < 0 || c.Priority > MaxPriority || c.Proto < 0 || c.Proto > 255 ||
				c.Ports.Lo < 0 || c.Ports.Hi > 65535 || c.Ports.Lo > c.Ports.Hi || (c.Ports.Lo == 0) != (c.Ports.Hi == 0) {
				return fmt.Errorf("%w: host policy: group %s: rule %s out of range", ErrInvalid, g, c.Origin)
			}
			if c.PeerGroup != "" {
				if _, ok := p.Members[c.PeerGroup]; !ok {
					return fmt.Errorf("%w: host policy: group %s: rule %s names group %s without members", ErrInvalid, g, c.Origin, c.PeerGroup)
				}
			}
			for _, s := range c.PeerNets {
				if _, err := ParseCIDR(s); err != nil {
					return fmt.Errorf("host policy: group %s: rule %s: %w", g, c.Origin, err)
				}
			}
		}
	}
	for g, ips := range p.Members {
		for _, s := range ips {
			if _, err := ParseIPv4(s); err != nil {
				return fmt.Errorf("host policy: member of %s: %w", g, err)
			}
		}
	}
	return nil
}
