package linuxbridge

// Policy enforcement with nftables (core.PolicyEnforcer). This kernel has no
// conntrack in the bridge family, but bridged IPv4 reaches the inet hooks
// (br_netfilter) with conntrack, where the input interface is the bridge,
// not the port. So each host has two tables of ours, replaced together in one
// `nft -f` transaction:
//
//   - bridge np_<host>: per port, by name: holds (new endpoints dropped until
//     their policy is in), DSCP marks, source-address checks, and the mark of
//     the source endpoint's group (bits 16-31 of the packet mark). Towards a
//     policed port only IPv4 to its own address (and ARP) passes, so that the
//     inet table may name the destination endpoint by address.
//   - inet np_<host>: conntrack zones for networks whose subnets overlap,
//     "established, related: accept", then per group one chain and one set
//     per direction: egress by the mark, ingress by (zone, destination
//     address). A set holds the disjoint (peer, protocol, port) boxes the
//     group's rules allow (policy_sets.go); the rest is dropped, and new TCP
//     must start with a SYN, so that a connection cut from conntrack stays cut.
//
// After an update every tracked connection that the new rules would not let
// start is deleted from conntrack: withdrawing an allow cuts what it covered,
// and nothing else is touched. Traffic of endpoints of networks without
// policy never meets a rule of ours.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nft"
)

var _ core.PolicyEnforcer = (*Driver)(nil)

// groupMarkShift places a group's number in the packet mark; the low 16 bits
// are left to others.
const groupMarkShift = 16

// pickupMark is the conntrack mark bit of a TCP connection that conntrack
// picked up mid-stream (its entry cut, or flushed by someone): such an
// entry is never taken as established, so that a server that speaks first
// after its client's allow was withdrawn cannot reopen what the withdrawal
// cut; each of its packets is judged as new (and without a SYN, dropped
// where a rule judges it).
const pickupMark = 0x10000000

// policyState is what the driver knows of its tables. mu serialises every
// nft run of this driver.
type policyState struct {
	mu sync.Mutex
	// table is the name of both tables; mark starts their comment and says
	// whose they are.
	table, mark string
	// loaded: the kernel's tables were read (after a restart, what the
	// previous agent left is the state in force until the first SetPolicy).
	loaded bool
	// sum is the digest of the rules in force ("" none), gen their
	// generation (-1 none).
	sum string
	gen int64
	// dirty: the kernel holds elements that sum does not cover (a hold
	// added to an adopted table), so the next SetPolicy rewrites.
	dirty bool
	// zones are the conntrack zones of bridges (absent: zone 0), kept as
	// long as the network stays policed so that tracked connections keep
	// their entries.
	zones map[string]int
	// covered maps each listed host link to its group in the policy in
	// force; held are links held until a policy lists them.
	covered map[string]string
	held    map[string]bool
	last    core.HostPolicy
}

func newPolicyState(host string) *policyState {
	safe := regexp.MustCompile(`[^A-Za-z0-9_]`).ReplaceAllString(host, "_")
	if len(safe) > 24 {
		safe = safe[:24]
	}
	return &policyState{table: "np_" + safe + "_" + core.Short(host)[:6], mark: "netplugin:lbpol@" + host,
		gen: -1, zones: map[string]int{}, covered: map[string]string{}, held: map[string]bool{}}
}

// TableName is the name of the nftables tables of the agent of host.
func TableName(host string) string { return newPolicyState(host).table }

func (d *Driver) nft() (*nft.Runner, error) {
	r, err := nft.New()
	if err != nil {
		return nil, fmt.Errorf("linuxbridge: policy: %w", err)
	}
	return r, nil
}

// load reads what the kernel has of our tables, once: their generation and
// digest, and the zones in use. A table of our name that is not marked as
// ours is an error, and nothing is touched.
func (d *Driver) load(ctx context.Context, r *nft.Runner) error {
	s := d.pol
	if s.loaded {
		return nil
	}
	tables, err := r.Tables(ctx)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if t[1] != s.table || (t[0] != "inet" && t[0] != "bridge") {
			continue
		}
		c, err := r.TableComment(ctx, t[0], t[1])
		if err != nil {
			return err
		}
		if !strings.HasPrefix(c, s.mark+" ") {
			return fmt.Errorf("%w: nftables table %s %s exists but is not netplugin's (comment %q); not touching it", core.ErrInUse, t[0], t[1], c)
		}
		f := map[string]string{}
		for _, kv := range strings.Fields(strings.TrimPrefix(c, s.mark)) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		if t[0] == "bridge" {
			s.sum = f["sum"]
			if g, err := strconv.ParseInt(f["gen"], 10, 64); err == nil {
				s.gen = g
			}
		}
		if t[0] == "inet" {
			zones, err := r.MapElements(ctx, "inet", s.table, "zones")
			if err != nil {
				return err
			}
			s.zones = zones
		}
	}
	s.loaded = true
	return nil
}

// SetPolicy implements core.PolicyEnforcer.
func (d *Driver) SetPolicy(ctx context.Context, p core.HostPolicy) (int64, error) {
	s := d.pol
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := core.ValidateHostPolicy(p); err != nil {
		return s.gen, fmt.Errorf("linuxbridge: %w", err)
	}
	var errs []error
	empty := len(p.Endpoints) == 0 && len(s.held) == 0
	r, err := d.nft()
	if err != nil {
		if empty {
			s.gen, s.last = p.Generation, p
			return s.gen, d.applyQoS(p)
		}
		return s.gen, err
	}
	if err := d.load(ctx, r); err != nil {
		return s.gen, err
	}
	s.held = map[string]bool{} // the policy is authoritative for every endpoint it lists
	if slices.ContainsFunc(p.Networks, func(n core.PolicyNetwork) bool { return n.Policed }) {
		if err := d.bridgeNetfilter(); err != nil {
			return s.gen, err
		}
	}
	zones := d.assignZones(p)
	body, sum := d.render(p, zones)
	if empty {
		sum = "" // no tables at all
	}
	changed := sum != s.sum || s.dirty
	if changed {
		script := d.script(body, p.Generation, sum, empty)
		if err := r.Apply(ctx, script); err != nil {
			return s.gen, fmt.Errorf("linuxbridge: apply policy generation %d: %w", p.Generation, err)
		}
		s.sum, s.dirty, s.zones = sum, false, zones
		n, err := d.cutRevoked(p, zones)
		if err != nil {
			errs = append(errs, err)
		}
		d.log.WithFields(logrus.Fields{"generation": p.Generation, "endpoints": len(p.Endpoints), "groups": len(p.Groups),
			"sum": sum, "cut": n}).Info("policy applied")
	}
	s.gen, s.last = p.Generation, p
	s.covered = map[string]string{}
	for _, e := range p.Endpoints {
		s.covered[core.HostIfName(e.Key)] = e.Group
	}
	if err := d.applyQoS(p); err != nil {
		errs = append(errs, err)
	}
	return s.gen, errors.Join(errs...)
}

// AppliedPolicy implements core.PolicyEnforcer: the generation in force, as
// this driver applied it or, after a restart, as the kernel's tables say.
func (d *Driver) AppliedPolicy(ctx context.Context) (int64, error) {
	s := d.pol
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := d.nft()
	if err != nil {
		return s.gen, nil // no nft, no tables: none in force
	}
	if err := d.load(ctx, r); err != nil {
		return -1, err
	}
	return s.gen, nil
}

// holdUntilPolicy makes sure a new endpoint of a group passes nothing before
// a policy that lists it is in force: unless the policy in force lists its
// link in its group, the link's name joins the hold set before the link is
// made. Callers hold no lock.
func (d *Driver) holdUntilPolicy(ctx context.Context, ep core.EndpointSpec) error {
	if ep.Group == "" {
		return nil
	}
	name := core.HostIfName(ep.Key())
	s := d.pol
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.covered[name]; (ok && g == ep.Tenant+"/"+ep.Group) || s.held[name] {
		return nil
	}
	r, err := d.nft()
	if err != nil {
		return fmt.Errorf("endpoint %s is in group %s: %w", ep.Key(), ep.Group, err)
	}
	if err := d.load(ctx, r); err != nil {
		return err
	}
	s.held[name] = true
	if s.sum != "" {
		// Tables in force (ours, or adopted after a restart): add the hold
		// to them rather than rewriting rules this driver may not know.
		err = r.Apply(ctx, fmt.Sprintf("add element bridge %s held { %s }\n", s.table, nft.Quote(name)))
		s.dirty = true
	} else {
		body, sum := d.render(s.last, s.zones)
		err = r.Apply(ctx, d.script(body, s.gen, sum, false))
		if err == nil {
			s.sum = sum
		}
	}
	if err != nil {
		delete(s.held, name)
		return fmt.Errorf("hold %s of %s until its policy is in: %w", name, ep.Key(), err)
	}
	d.log.WithFields(logrus.Fields{"ep": ep.Key(), "link": name, "group": ep.Group}).Debug("endpoint held until its policy is in")
	return nil
}

// bridgeNetfilter makes bridged IPv4 reach the inet hooks in this namespace.
func (d *Driver) bridgeNetfilter() error {
	path := filepath.Join(d.sysctlRoot, "net/bridge/bridge-nf-call-iptables")
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("linuxbridge: policy needs br_netfilter (CONFIG_BRIDGE_NETFILTER; modprobe br_netfilter): %w", err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("linuxbridge: enable bridge-nf-call-iptables: %w", err)
	}
	return nil
}

// assignZones gives a conntrack zone to the bridge of each policed network
// whose subnet overlaps that of another one in zone 0 (two tenants with the
// same addresses must not share conntrack entries). Zones in use are kept, so
// that live connections keep their entries; most networks stay in zone 0.
func (d *Driver) assignZones(p core.HostPolicy) map[string]int {
	out := map[string]int{}
	used := map[int]bool{}
	var zero []*net.IPNet
	var fresh []core.PolicyNetwork
	for _, n := range p.Networks {
		if !n.Policed {
			continue
		}
		br := BridgeName(d.host, n.Key)
		if z, ok := d.pol.zones[br]; ok && z > 0 {
			out[br], used[z] = z, true
			continue
		}
		fresh = append(fresh, n)
	}
	for _, n := range fresh {
		_, sn, err := net.ParseCIDR(n.Subnet)
		if err != nil {
			continue
		}
		if !slices.ContainsFunc(zero, func(z *net.IPNet) bool { return core.Overlaps(z, sn) }) {
			zero = append(zero, sn)
			continue
		}
		z := 1
		for used[z] {
			z++
		}
		out[BridgeName(d.host, n.Key)], used[z] = z, true
	}
	return out
}

// render returns the body of both tables for p (without their comments, which
// carry the generation) and its digest.
func (d *Driver) render(p core.HostPolicy, zones map[string]int) (string, string) {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	elems := func(items []string) string {
		if len(items) == 0 {
			return ""
		}
		return " elements = { " + strings.Join(items, ", ") + " };"
	}
	policed := map[string]bool{}
	for _, n := range p.Networks {
		policed[n.Key] = n.Policed
	}
	groups := make([]string, 0, len(p.Groups))
	for g := range p.Groups {
		groups = append(groups, g)
	}
	slices.Sort(groups)
	num := map[string]int{}
	for i, g := range groups {
		num[g] = i + 1
	}
	members := map[string][]uint32{}
	for g, ips := range p.Members {
		for _, s := range ips {
			if ip, err := core.ParseIPv4(s); err == nil {
				members[g] = append(members[g], core.IPToUint(ip))
			}
		}
		slices.Sort(members[g])
	}
	var held, guarded, policedPorts, portIP, srcGroup, dscp, bridges, ingress []string
	dscpValues := map[int]bool{}
	for h := range d.pol.held {
		held = append(held, nft.Quote(h))
	}
	for _, e := range p.Endpoints {
		name := nft.Quote(core.HostIfName(e.Key))
		if e.QoS != nil && e.QoS.DSCP >= 0 {
			dscp = append(dscp, fmt.Sprintf("%s : jump dscp_%d", name, e.QoS.DSCP))
			dscpValues[e.QoS.DSCP] = true
		}
		if !policed[e.Network] {
			continue
		}
		guarded = append(guarded, name)
		portIP = append(portIP, name+" . "+e.IP)
		r, ok := p.Groups[e.Group]
		if !ok {
			continue
		}
		policedPorts = append(policedPorts, name)
		if len(r.Out) > 0 {
			srcGroup = append(srcGroup, fmt.Sprintf("%s : jump mark_g%d", name, num[e.Group]))
		}
		if len(r.In) > 0 {
			ingress = append(ingress, fmt.Sprintf("%d . %s : jump in_g%d", zones[BridgeName(d.host, e.Network)], e.IP, num[e.Group]))
		}
	}
	for _, n := range p.Networks {
		if n.Policed {
			bridges = append(bridges, nft.Quote(BridgeName(d.host, n.Key)))
		}
	}
	for _, l := range [][]string{held, guarded, policedPorts, portIP, srcGroup, dscp, bridges, ingress} {
		slices.Sort(l)
	}

	w("table bridge %s {", d.pol.table)
	w("\tset held { type ifname;%s }", elems(held))
	w("\tset guarded { type ifname;%s }", elems(guarded))
	w("\tset policed { type ifname;%s }", elems(policedPorts))
	w("\tset portip { type ifname . ipv4_addr;%s }", elems(portIP))
	w("\tmap srcgroup { type ifname : verdict;%s }", elems(srcGroup))
	w("\tmap dscp { type ifname : verdict;%s }", elems(dscp))
	for _, v := range slices.Sorted(maps.Keys(dscpValues)) {
		w("\tchain dscp_%d {\n\t\tether type ip ip dscp set %d\n\t}", v, v)
	}
	for _, g := range groups {
		if len(p.Groups[g].Out) > 0 {
			w("\tchain mark_g%d {\n\t\tmeta mark set meta mark & 0x0000ffff | 0x%08x\n\t}", num[g], num[g]<<groupMarkShift)
		}
	}
	w("\tchain c_pre {")
	w("\t\ttype filter hook prerouting priority -200; policy accept;")
	w("\t\tiifname @held drop")
	w("\t\tiifname vmap @dscp")
	w("\t\tiifname != @guarded accept")
	w("\t\tether type arp accept")
	w("\t\tiifname @policed ether type != ip drop")
	w("\t\tether type ip iifname . ip saddr != @portip drop")
	w("\t\tiifname vmap @srcgroup")
	w("\t}")
	w("\tchain c_fwd {")
	w("\t\ttype filter hook forward priority -200; policy accept;")
	w("\t\toifname @held drop")
	w("\t\toifname != @policed accept")
	w("\t\tether type arp accept")
	w("\t\tether type != ip drop")
	w("\t\toifname . ip daddr != @portip drop")
	w("\t}")
	w("}")

	if len(bridges) > 0 {
		var zoneElems, egress []string
		for br, z := range zones {
			zoneElems = append(zoneElems, fmt.Sprintf("%s : %d", nft.Quote(br), z))
		}
		slices.Sort(zoneElems)
		w("table inet %s {", d.pol.table)
		w("\tset bridges { type ifname;%s }", elems(bridges))
		w("\tmap zones { typeof iifname : ct zone;%s }", elems(zoneElems))
		for _, g := range groups {
			r := p.Groups[g]
			for _, dir := range []struct {
				name  string
				rules []core.CompiledRule
				peer  string
			}{{"out", r.Out, "daddr"}, {"in", r.In, "saddr"}} {
				if len(dir.rules) == 0 {
					continue
				}
				var items []string
				for _, bx := range allowBoxes(dir.rules, members) {
					items = append(items, bx.element())
				}
				w("\tset allow_%s_g%d { type ipv4_addr . inet_proto . inet_service; flags interval;%s }", dir.name, num[g], elems(items))
				w("\tchain %s_g%d {", dir.name, num[g])
				w("\t\tct state invalid drop")
				w("\t\ttcp flags != syn / fin,syn,rst,ack drop")
				w("\t\tip %s . meta l4proto . th dport @allow_%s_g%d return", dir.peer, dir.name, num[g])
				w("\t\tdrop")
				w("\t}")
				if dir.name == "out" {
					egress = append(egress, fmt.Sprintf("0x%08x : jump out_g%d", num[g]<<groupMarkShift, num[g]))
				}
			}
		}
		w("\tmap egress { type mark : verdict;%s }", elems(egress))
		w("\tmap ingress { typeof ct zone . ip daddr : verdict;%s }", elems(ingress))
		w("\tchain c_raw {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tct zone set iifname map @zones\n\t}")
		w("\tchain c_rawout {\n\t\ttype filter hook output priority raw; policy accept;\n\t\tct zone set oifname map @zones\n\t}")
		w("\tchain c_fwd {")
		w("\t\ttype filter hook forward priority filter; policy accept;")
		w("\t\tiifname != @bridges accept")
		w("\t\tct state new tcp flags != syn / fin,syn,rst,ack ct mark set ct mark or 0x%08x", pickupMark)
		w("\t\tct state established,related ct mark & 0x%08x == 0 accept", pickupMark)
		w("\t\tmeta mark & 0xffff0000 vmap @egress")
		w("\t\tct zone . ip daddr vmap @ingress")
		w("\t}")
		w("}")
	}
	sum := sha256.Sum256([]byte(b.String()))
	return b.String(), hex.EncodeToString(sum[:8])
}

// script replaces both tables with body in one transaction (the "add" makes
// the "delete" succeed on a first run); empty just removes them.
func (d *Driver) script(body string, gen int64, sum string, empty bool) string {
	var b strings.Builder
	for _, fam := range []string{"bridge", "inet"} {
		fmt.Fprintf(&b, "add table %s %s\ndelete table %s %s\n", fam, d.pol.table, fam, d.pol.table)
	}
	if empty {
		return b.String()
	}
	comment := fmt.Sprintf("\tcomment %s", nft.Quote(fmt.Sprintf("%s gen=%d sum=%s", d.pol.mark, gen, sum)))
	for _, l := range strings.SplitAfter(body, "\n") {
		b.WriteString(l)
		if strings.HasPrefix(l, "table ") {
			b.WriteString(comment + "\n")
		}
	}
	return b.String()
}

// cutRevoked deletes every tracked connection of a policed network that p
// would not let start, and returns how many.
func (d *Driver) cutRevoked(p core.HostPolicy, zones map[string]int) (uint, error) {
	type netOf struct {
		key string
		sn  *net.IPNet
	}
	byZone := map[uint16][]netOf{}
	for _, n := range p.Networks {
		if !n.Policed {
			continue
		}
		_, sn, err := net.ParseCIDR(n.Subnet)
		if err != nil {
			continue
		}
		z := uint16(zones[BridgeName(d.host, n.Key)])
		byZone[z] = append(byZone[z], netOf{n.Key, sn})
	}
	if len(byZone) == 0 {
		return 0, nil
	}
	ev := core.NewPolicyEval(p)
	f := revokedFilter(func(fl *netlink.ConntrackFlow) bool {
		t := fl.Forward
		for _, n := range byZone[fl.Zone] {
			if n.sn.Contains(t.SrcIP) || n.sn.Contains(t.DstIP) {
				port := int(t.DstPort)
				if t.Protocol != unix.IPPROTO_TCP && t.Protocol != unix.IPPROTO_UDP {
					port = 0
				}
				return !ev.Allows(n.key, t.SrcIP, t.DstIP, int(t.Protocol), port)
			}
		}
		return false
	})
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
	if err != nil {
		return n, fmt.Errorf("linuxbridge: cut connections the policy no longer allows: %w", err)
	}
	return n, nil
}

type revokedFilter func(*netlink.ConntrackFlow) bool

func (f revokedFilter) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool { return f(fl) }
