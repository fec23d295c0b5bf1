package core

// Policy and QoS model, after contiv's: an endpoint group lives in one network
// and carries policies (sets of rules) and a network profile (bandwidth and
// DSCP). This file holds the objects, their parsing and their validation; see
// policycompile.go for what a host must enforce.

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
)

// Rule directions and actions.
const (
	DirIn       = "in"  // traffic towards the group's endpoints; the peer is the From* side
	DirOut      = "out" // traffic from the group's endpoints; the peer is the To* side
	ActionAllow = "allow"
	ActionDeny  = "deny"
)

// Rule priorities: higher wins (contiv's range).
const (
	MinPriority = 1
	MaxPriority = 100
)

// IP protocol numbers the rules name.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// Rule is one rule of a policy. An "in" rule names its peer with From*, an
// "out" rule with To*; at most one of group, network and IP. No peer: any.
// Port is the destination port (the server's): N or N-M, with tcp or udp.
type Rule struct {
	Name        string `json:"name"`
	Priority    int    `json:"priority"`
	Direction   string `json:"direction"`
	Action      string `json:"action"`
	FromGroup   string `json:"fromGroup,omitempty"` // group name in the policy's tenant
	ToGroup     string `json:"toGroup,omitempty"`
	FromNetwork string `json:"fromNetwork,omitempty"` // network name in the policy's tenant
	ToNetwork   string `json:"toNetwork,omitempty"`
	FromIP      string `json:"fromIp,omitempty"` // IPv4 CIDR or address
	ToIP        string `json:"toIp,omitempty"`
	Protocol    string `json:"protocol,omitempty"` // tcp, udp, icmp or 1-255; empty: any
	Port        string `json:"port,omitempty"`
}

// Policy is a named set of rules in a tenant.
type Policy struct {
	Tenant string `json:"tenant"`
	Name   string `json:"name"`
	Rules  []Rule `json:"rules"`
}

// Key is the policy's identity: tenant/name.
func (p Policy) Key() string { return p.Tenant + "/" + p.Name }

// Group is an endpoint group: endpoints of one network that share policies
// and a profile. Group names are unique within a tenant.
type Group struct {
	Tenant   string   `json:"tenant"`
	Name     string   `json:"name"`
	Network  string   `json:"network"`            // network name in the tenant
	Policies []string `json:"policies,omitempty"` // policy names in the tenant
	Profile  string   `json:"profile,omitempty"`  // profile name in the tenant
}

// Key is the group's identity: tenant/name.
func (g Group) Key() string { return g.Tenant + "/" + g.Name }

// NetworkKey is the key of the group's network.
func (g Group) NetworkKey() string { return g.Tenant + "/" + g.Network }

// Profile is a network profile: rates in SI bits per second ("10mbit" is
// 10,000,000 b/s), into the endpoint (In) and out of it (Out); the burst in
// bytes (0: a default that suits the rate); the DSCP marked on traffic from
// the endpoint (nil: left as the endpoint sent it).
type Profile struct {
	Tenant       string `json:"tenant"`
	Name         string `json:"name"`
	BandwidthIn  string `json:"bandwidthIn,omitempty"`
	BandwidthOut string `json:"bandwidthOut,omitempty"`
	Burst        int64  `json:"burst,omitempty"`
	DSCP         *int   `json:"dscp,omitempty"`
}

// Key is the profile's identity: tenant/name.
func (p Profile) Key() string { return p.Tenant + "/" + p.Name }

// Limits of profiles.
const (
	MinRate  = 8_000           // 8 kbit/s: below that a token bucket holds less than one packet per second
	MaxRate  = 100_000_000_000 // 100 gbit/s
	MaxBurst = 256 << 20       // bytes
	MaxDSCP  = 63
	minBurst = 16 << 10 // default burst floor: a few full-size packets
	burstDiv = 50       // default burst: 20 ms of the rate
)

var rateRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*(bit|kbit|mbit|gbit)?$`)

// ParseRate parses an SI rate in bits per second: "250000", "500kbit",
// "10mbit", "1.5gbit". Byte units are refused: tc's "mbps" means megabytes,
// which is a classic tenfold mistake.
func ParseRate(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	m := rateRE.FindStringSubmatch(t)
	if m == nil {
		hint := ""
		if strings.HasSuffix(t, "bps") {
			hint = " (bps would be bytes per second: write bit, kbit, mbit or gbit)"
		}
		return 0, fmt.Errorf("%w: rate %q: want a number of bits per second with bit, kbit, mbit or gbit%s", ErrInvalid, s, hint)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%w: rate %q: %v", ErrInvalid, s, err)
	}
	mult := map[string]float64{"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m[2]]
	bits := math.Round(v * mult)
	if bits < MinRate || bits > MaxRate {
		return 0, fmt.Errorf("%w: rate %q outside 8kbit-100gbit", ErrInvalid, s)
	}
	return uint64(bits), nil
}

// PortRange is an inclusive range of ports; the zero value means any port.
type PortRange struct{ Lo, Hi int }

// Any reports whether the range is "any port".
func (p PortRange) Any() bool { return p.Lo == 0 && p.Hi == 0 }

// ParsePortRange parses "N" or "N-M" (1-65535); "" is any port.
func ParsePortRange(s string) (PortRange, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return PortRange{}, nil
	}
	lo, hi, isRange := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b := a
	var err2 error
	if isRange {
		b, err2 = strconv.Atoi(strings.TrimSpace(hi))
	}
	if err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b {
		return PortRange{}, fmt.Errorf("%w: port %q: want N or N-M within 1-65535", ErrInvalid, s)
	}
	return PortRange{a, b}, nil
}

// ParseProtocol returns the IP protocol number of tcp, udp, icmp or a number
// 1-255; "" is any protocol (0).
func ParseProtocol(s string) (int, error) {
	switch t := strings.ToLower(strings.TrimSpace(s)); t {
	case "":
		return 0, nil
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	default:
		n, err := strconv.Atoi(t)
		if err != nil || n < 1 || n > 255 {
			return 0, fmt.Errorf("%w: protocol %q: want tcp, udp, icmp or a number 1-255", ErrInvalid, s)
		}
		return n, nil
	}
}

// ParsePeerIP parses a rule's IP peer: a CIDR without host bits, or a plain
// address (a /32).
func ParsePeerIP(s string) (*net.IPNet, error) {
	if !strings.Contains(s, "/") {
		ip, err := ParseIPv4(s)
		if err != nil {
			return nil, err
		}
		return &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}, nil
	}
	return ParseCIDR(s)
}

// peer returns the rule's peer fields for its direction, and the fields of
// the other direction (which must be empty).
func (r Rule) peer() (group, network, ip string, wrong []string) {
	if r.Direction == DirIn {
		for _, f := range [][2]string{{"toGroup", r.ToGroup}, {"toNetwork", r.ToNetwork}, {"toIp", r.ToIP}} {
			if f[1] != "" {
				wrong = append(wrong, f[0])
			}
		}
		return r.FromGroup, r.FromNetwork, r.FromIP, wrong
	}
	for _, f := range [][2]string{{"fromGroup", r.FromGroup}, {"fromNetwork", r.FromNetwork}, {"fromIp", r.FromIP}} {
		if f[1] != "" {
			wrong = append(wrong, f[0])
		}
	}
	return r.ToGroup, r.ToNetwork, r.ToIP, wrong
}

// ValidateRule checks one rule on its own.
func ValidateRule(r Rule) error {
	if err := ValidName("rule", r.Name); err != nil {
		return err
	}
	where := "rule " + r.Name
	if r.Priority < MinPriority || r.Priority > MaxPriority {
		return fmt.Errorf("%w: %s: priority %d outside %d-%d", ErrInvalid, where, r.Priority, MinPriority, MaxPriority)
	}
	if r.Direction != DirIn && r.Direction != DirOut {
		return fmt.Errorf("%w: %s: direction %q: want in or out", ErrInvalid, where, r.Direction)
	}
	if r.Action != ActionAllow && r.Action != ActionDeny {
		return fmt.Errorf("%w: %s: action %q: want allow or deny", ErrInvalid, where, r.Action)
	}
	group, network, ip, wrong := r.peer()
	if len(wrong) > 0 {
		side := map[string]string{DirIn: "from", DirOut: "to"}[r.Direction]
		return fmt.Errorf("%w: %s: a rule of direction %s names its peer with %s*, not %s", ErrInvalid, where, r.Direction, side, strings.Join(wrong, ", "))
	}
	n := 0
	for _, v := range []string{group, network, ip} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("%w: %s: name at most one peer (group, network or IP)", ErrInvalid, where)
	}
	if group != "" {
		if err := ValidName("group", group); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	if network != "" {
		if err := ValidName("network", network); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	if ip != "" {
		if _, err := ParsePeerIP(ip); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	proto, err := ParseProtocol(r.Protocol)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	ports, err := ParsePortRange(r.Port)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if !ports.Any() && proto != ProtoTCP && proto != ProtoUDP {
		return fmt.Errorf("%w: %s: a port needs protocol tcp or udp", ErrInvalid, where)
	}
	return nil
}

// ValidatePolicy checks a policy: names, every rule, rule names unique, and
// no two rules of one priority and direction with conflicting actions that
// may match the same packet.
func ValidatePolicy(p Policy) error {
	if err := ValidName("tenant", p.Tenant); err != nil {
		return err
	}
	if err := ValidName("policy", p.Name); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, r := range p.Rules {
		if err := ValidateRule(r); err != nil {
			return fmt.Errorf("policy %s: %w", p.Key(), err)
		}
		if seen[r.Name] {
			return fmt.Errorf("%w: policy %s: two rules named %s", ErrInvalid, p.Key(), r.Name)
		}
		seen[r.Name] = true
	}
	return CheckTies(p.Key(), []Policy{p})
}

// CheckTies refuses two rules of the given policies (those of one group, or
// one policy) with the same direction and priority and different actions
// that may match the same packet: which one wins would be arbitrary. Peers
// are compared without knowing group members: two different groups never
// share an endpoint, but a group may lie in any network or CIDR.
func CheckTies(what string, policies []Policy) error {
	type ref struct {
		origin string
		r      Rule
	}
	// Only rules of one direction and priority can tie: compare within those.
	buckets := map[string][]ref{}
	var order []string
	for _, p := range policies {
		for _, r := range p.Rules {
			k := r.Direction + "/" + strconv.Itoa(r.Priority)
			if _, ok := buckets[k]; !ok {
				order = append(order, k)
			}
			buckets[k] = append(buckets[k], ref{p.Name + "/" + r.Name, r})
		}
	}
	for _, k := range order {
		all := buckets[k]
		for i := range all {
			for j := i + 1; j < len(all); j++ {
				a, b := all[i].r, all[j].r
				if a.Action == b.Action || !mayOverlap(a, b) {
					continue
				}
				return fmt.Errorf("%w: %s: rules %s (%s) and %s (%s) have direction %s and priority %d and may match the same traffic: give them different priorities",
					ErrInvalid, what, all[i].origin, a.Action, all[j].origin, b.Action, a.Direction, a.Priority)
			}
		}
	}
	return nil
}

// mayOverlap reports whether two valid rules of one direction can match one packet.
func mayOverlap(a, b Rule) bool {
	pa, _ := ParseProtocol(a.Protocol)
	pb, _ := ParseProtocol(b.Protocol)
	if pa != 0 && pb != 0 && pa != pb {
		return false
	}
	ra, _ := ParsePortRange(a.Port)
	rb, _ := ParsePortRange(b.Port)
	if !ra.Any() && !rb.Any() && (ra.Hi < rb.Lo || rb.Hi < ra.Lo) {
		return false
	}
	ga, na, ia, _ := a.peer()
	gb, nb, ib, _ := b.peer()
	switch {
	case ga == "" && na == "" && ia == "", gb == "" && nb == "" && ib == "":
		return true // one of them matches any peer
	case ga != "" && gb != "":
		return ga == gb
	case na != "" && nb != "":
		return na == nb
	case ia != "" && ib != "":
		x, _ := ParsePeerIP(ia)
		y, _ := ParsePeerIP(ib)
		return Overlaps(x, y)
	}
	// A group against a network or a CIDR, or a network against a CIDR:
	// without the store at hand they may always meet.
	return true
}

// PolicyDriver reports whether endpoints of driver can be policed and shaped
// on the host. macvlan, ipvlan and hostnic traffic never crosses a host
// bridge or switch, so nothing on the host sees it.
func PolicyDriver(driver string) bool {
	switch driver {
	case "macvlan", "ipvlan", "hostnic":
		return false
	}
	return true
}

// ValidateGroup checks a group against its network: names, and a driver that
// can enforce what the group asks for.
func ValidateGroup(g Group, n Network) error {
	if err := ValidName("tenant", g.Tenant); err != nil {
		return err
	}
	if err := ValidName("group", g.Name); err != nil {
		return err
	}
	if err := ValidName("network", g.Network); err != nil {
		return err
	}
	if n.Key() != g.NetworkKey() {
		return fmt.Errorf("%w: group %s is in network %s, not %s", ErrInvalid, g.Key(), g.NetworkKey(), n.Key())
	}
	for _, p := range g.Policies {
		if err := ValidName("policy", p); err != nil {
			return err
		}
	}
	if g.Profile != "" {
		if err := ValidName("profile", g.Profile); err != nil {
			return err
		}
	}
	if (len(g.Policies) > 0 || g.Profile != "") && !PolicyDriver(n.Driver) {
		return fmt.Errorf("%w: group %s: network %s uses driver %s, whose traffic never crosses the host: it cannot carry a policy or profile",
			ErrInvalid, g.Key(), n.Key(), n.Driver)
	}
	return nil
}

// ValidateProfile checks a profile.
func ValidateProfile(p Profile) error {
	if err := ValidName("tenant", p.Tenant); err != nil {
		return err
	}
	if err := ValidName("profile", p.Name); err != nil {
		return err
	}
	_, err := p.QoS()
	return err
}

// QoS is a profile as drivers apply it.
type QoS struct {
	RateIn  uint64 `json:"rateIn,omitempty"`  // bits/s into the endpoint; 0: unlimited
	RateOut uint64 `json:"rateOut,omitempty"` // bits/s out of the endpoint; 0: unlimited
	Burst   uint64 `json:"burst,omitempty"`   // bytes, for each direction
	DSCP    int    `json:"dscp"`              // marked on IPv4 from the endpoint; -1: left alone
}

// QoS parses the profile.
func (p Profile) QoS() (QoS, error) {
	q := QoS{DSCP: -1}
	var err error
	if p.BandwidthIn != "" {
		if q.RateIn, err = ParseRate(p.BandwidthIn); err != nil {
			return q, fmt.Errorf("profile %s: bandwidth in: %w", p.Key(), err)
		}
	}
	if p.BandwidthOut != "" {
		if q.RateOut, err = ParseRate(p.BandwidthOut); err != nil {
			return q, fmt.Errorf("profile %s: bandwidth out: %w", p.Key(), err)
		}
	}
	if p.Burst < 0 || p.Burst > MaxBurst {
		return q, fmt.Errorf("%w: profile %s: burst %d bytes outside 0-%d", ErrInvalid, p.Key(), p.Burst, MaxBurst)
	}
	if p.Burst > 0 && q.RateIn == 0 && q.RateOut == 0 {
		return q, fmt.Errorf("%w: profile %s: a burst needs a bandwidth", ErrInvalid, p.Key())
	}
	if p.DSCP != nil {
		if *p.DSCP < 0 || *p.DSCP > MaxDSCP {
			return q, fmt.Errorf("%w: profile %s: DSCP %d outside 0-63", ErrInvalid, p.Key(), *p.DSCP)
		}
		q.DSCP = *p.DSCP
	}
	if q.RateIn == 0 && q.RateOut == 0 && q.DSCP < 0 {
		return q, fmt.Errorf("%w: profile %s sets neither a bandwidth nor a DSCP", ErrInvalid, p.Key())
	}
	q.Burst = uint64(p.Burst)
	return q, nil
}

// BurstFor is the burst in bytes a driver uses for rate: the profile's, or
// 20 ms of the rate but at least 16 KiB (a few full-size packets, which a
// token bucket must hold to pass them at all).
func (q QoS) BurstFor(rate uint64) uint64 {
	if q.Burst > 0 {
		return q.Burst
	}
	return max(rate/8/burstDiv, minBurst)
}

// Empty reports whether the profile shapes and marks nothing.
func (q QoS) Empty() bool { return q.RateIn == 0 && q.RateOut == 0 && q.DSCP < 0 }
