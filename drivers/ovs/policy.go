package ovs

// Policy enforcement on the integration bridge (core.PolicyEnforcer): the
// flows of policy_flows.go, written as one OpenFlow bundle per update (only
// the flows that differ from what is in force; all of ours, atomically
// replaced, after a restart that cannot tell), shapers for profiles
// (qos.go), and after each update the tracked connections the new rules
// would not let start are flushed from the userspace datapath's conntrack.
//
// Flows reference ports by OpenFlow number, which vswitchd gives a port only
// once it attaches it. So that a new endpoint's flows are in before its first
// packet, listed endpoints get a port number of our choosing (ofport_request,
// from policyPortBase up), known to SetPolicy before the port exists; a new
// endpoint of a group that the policy in force does not cover is held (its
// port number and MAC dropped in table 0) until a policy that lists it is in.
//
// Ownership: our flows carry PolicyCookie, which names the host label, and
// no other flow is touched.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
)

var _ core.PolicyEnforcer = (*Driver)(nil)

const (
	// policyPortBase is the first OpenFlow port number we request; vswitchd
	// numbers other ports from 1 up.
	policyPortBase = 1000
	maxOfport      = 65279
	extPolicy      = "netplugin-policy" // on the integration bridge: gen=..,sum=..,pid=..
)

// PolicyCookie is the cookie of the policy flows of the agent of host: "np"
// "P" and a digest of the label, so that agents sharing one vswitchd never
// take each other's flows for their own.
func PolicyCookie(host string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(host))
	return fmt.Sprintf("0x6e705000%08x", h.Sum32())
}

type heldPort struct {
	port int
	mac  string
}

// policyState is what the driver knows of its policy flows. mu serialises
// every change of them.
type policyState struct {
	mu     sync.Mutex
	cookie string
	// applied are the flows in force by key (see flowSet), valid when known.
	applied map[string]string
	known   bool
	dirty   bool // flows were added to an adopted table without knowing it
	gen     int64
	sum     string
	pid     string     // the vswitchd the flows were written to
	bridge  ovsdb.UUID // the bridge they were written to
	// ports are the OpenFlow numbers of listed and held endpoints; covered
	// maps each endpoint whose flows are in force to its group.
	ports   map[string]int
	covered map[string]string
	held    map[string]heldPort
	// shapedOut are the container namespaces in which we shaped an
	// endpoint's outbound traffic, by endpoint key.
	shapedOut map[string]string
	// shapedIn are the endpoints whose host end we shaped; swept: every
	// port was looked at once (after a restart, what was shaped is unknown).
	shapedIn map[string]bool
	swept    bool
	last     core.HostPolicy
	// pending: last lists endpoints whose network was not on the bridge yet.
	pending bool
}

func newPolicyState(host string) *policyState {
	return &policyState{cookie: PolicyCookie(host), applied: map[string]string{}, gen: -1, ports: map[string]int{},
		covered: map[string]string{}, held: map[string]heldPort{}, shapedOut: map[string]string{},
		shapedIn: map[string]bool{}}
}

func (d *Driver) ofctlBin() (string, error) {
	if d.cfg.Ofctl != "" {
		return d.cfg.Ofctl, nil
	}
	return findBinary("ovs-ofctl")
}

func (d *Driver) mgmt() string { return "unix:" + filepath.Join(d.cfg.RunDir, d.cfg.Bridge+".mgmt") }

// waitMgmt waits until vswitchd has made the bridge's OpenFlow socket: it
// does so after it read a new bridge from the database, which may be after
// the transaction that added it returned.
func (d *Driver) waitMgmt(ctx context.Context) error {
	path := strings.TrimPrefix(d.mgmt(), "unix:")
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for ovs-vswitchd to open %s: %w", path, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// runOfctl runs ovs-ofctl (found lazily: a host without VXLAN may not have
// needed it so far) against the integration bridge.
func (d *Driver) runOfctl(ctx context.Context, stdin string, args ...string) (string, error) {
	bin, err := d.ofctlBin()
	if err != nil {
		return "", fmt.Errorf("ovs: policy needs ovs-ofctl: %w", err)
	}
	secs := max(int(d.cfg.Timeout.Seconds()), 1)
	cmd := exec.CommandContext(ctx, bin, append([]string{"--timeout=" + strconv.Itoa(secs)}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ovs-ofctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (d *Driver) appctl(ctx context.Context, args ...string) (string, error) {
	bin, err := findBinary("ovs-appctl")
	if err != nil {
		return "", fmt.Errorf("ovs: policy needs ovs-appctl: %w", err)
	}
	target := d.cfg.VswitchdCtl
	if target == "" {
		target = filepath.Join(d.cfg.RunDir, "ovs-vswitchd.ctl")
		if _, err := os.Stat(target); err != nil {
			target = filepath.Join(d.cfg.RunDir, "ovs-vswitchd."+d.vswitchdPid()+".ctl")
		}
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--timeout=5", "-t", target}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ovs-appctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ifaceState is what SetPolicy reads of the interfaces: our endpoint ports'
// numbers, and every number in use or requested (not to be requested again).
type ifaceState struct {
	ofport map[string]int // endpoint key -> ofport (0 while unattached)
	used   map[int]bool
	bridge *bridgeRow
}

func (d *Driver) readPolicyRows(ctx context.Context) (ifaceState, error) {
	st := ifaceState{ofport: map[string]int{}, used: map[int]bool{}}
	res, err := d.tx(ctx, true,
		ovsdb.Select("Interface", nil, "name", "ofport", "ofport_request", "external_ids"),
		ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Bridge)}, bridgeCols()...))
	if err != nil {
		return st, fmt.Errorf("read interfaces: %w", err)
	}
	for _, r := range res[0].Rows {
		of, _ := r.GetInt("ofport")
		if req, err := r.GetInt("ofport_request"); err == nil && req > 0 {
			st.used[int(req)] = true
		}
		if of > 0 {
			st.used[int(of)] = true
		}
		ext, _ := r.GetStringMap("external_ids")
		if d.ours(ext) && ext[extRole] == roleEndpoint && ext[extEndpoint] != "" {
			st.ofport[ext[extEndpoint]] = int(max(of, 0))
		}
	}
	if st.bridge, err = firstBridge(res[1].Rows); err != nil {
		return st, err
	}
	return st, nil
}

// portFor returns the OpenFlow number for endpoint key: the one vswitchd gave
// its port, else the one requested for it, else a free one, which it marks
// as used in st.
func (s *policyState) portFor(key string, st ifaceState) (int, error) {
	if of := st.ofport[key]; of > 0 {
		return of, nil
	}
	if n := s.ports[key]; n > 0 {
		return n, nil
	}
	for _, n := range s.ports {
		st.used[n] = true
	}
	for n := policyPortBase; n <= maxOfport; n++ {
		if !st.used[n] {
			st.used[n] = true
			return n, nil
		}
	}
	return 0, fmt.Errorf("%w: no free OpenFlow port number", core.ErrInUse)
}

// SetPolicy implements core.PolicyEnforcer.
func (d *Driver) SetPolicy(ctx context.Context, p core.HostPolicy) (int64, error) {
	if err := core.ValidateHostPolicy(p); err != nil {
		return d.pol.gen, fmt.Errorf("ovs: %w", err)
	}
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	return d.setPolicy(ctx, p)
}

// reapplyPolicy applies the policy in force again when it was applied
// before its networks were on the bridge (the agent may give the policy
// before the networks it covers): their flows go in now, before any of
// their endpoints is plugged.
func (d *Driver) reapplyPolicy(ctx context.Context) error {
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	if !d.pol.pending {
		return nil
	}
	_, err := d.setPolicy(ctx, d.pol.last)
	return err
}

// setPolicy is SetPolicy with pol.mu held.
func (d *Driver) setPolicy(ctx context.Context, p core.HostPolicy) (int64, error) {
	s := d.pol
	if err := d.ready(ctx); err != nil {
		return s.gen, err
	}
	st, err := d.readPolicyRows(ctx)
	if err != nil {
		return s.gen, err
	}
	if st.bridge == nil {
		// No bridge yet, so no port: nothing to program. Endpoints plugged
		// later are held until a policy covers them.
		s.last, s.gen, s.covered, s.held = p, p.Generation, map[string]string{}, map[string]heldPort{}
		s.pending = len(p.Endpoints) > 0
		return s.gen, nil
	}
	if !d.ours(st.bridge.ext) {
		return s.gen, d.notOurs("bridge "+d.cfg.Bridge, st.bridge.ext)
	}
	if pid := d.vswitchdPid(); st.bridge.uuid != s.bridge || pid != s.pid {
		// Another bridge or another vswitchd: none of our flows are there
		// any more (or, after a restart, maybe all of them).
		s.known, s.bridge = false, st.bridge.uuid
	}
	recs := records(st.bridge.ext)
	num := groupNumbers(p)
	policed := map[string]bool{}
	for _, n := range p.Networks {
		policed[n.Key] = n.Policed
	}
	if err := d.waitMgmt(ctx); err != nil {
		return s.gen, err
	}
	var eps []polEndpoint
	pending := false
	ports := map[string]int{}
	covered := map[string]string{}
	for _, e := range p.Endpoints {
		pe := polEndpoint{PolicyEndpoint: e, policed: policed[e.Network], group: num[e.Group]}
		if r, ok := recs[e.Network]; ok {
			pe.vlan = r.VLAN
		}
		if pe.port, err = s.portFor(e.Key, st); err != nil {
			return s.gen, err
		}
		ports[e.Key] = pe.port
		if pe.vlan > 0 || !pe.policed {
			covered[e.Key] = e.Group
		} else {
			pending = true
		}
		eps = append(eps, pe)
	}
	fs := renderFlows(s.cookie, p, eps, nil).lines()
	sum := flowSum(fs)
	pid := d.vswitchdPid()
	if !s.known {
		// After a restart: flows written by our predecessor to this very
		// vswitchd from the same rules are adopted as they are.
		if f := parseKV(st.bridge.ext[extPolicy]); f["sum"] == sum && f["pid"] == pid && len(s.held) == 0 {
			s.applied, s.known, s.sum, s.pid = fs, true, sum, pid
		}
	}
	changed := !s.known || s.dirty || !maps.Equal(s.applied, fs)
	if changed {
		if err := d.writeFlows(ctx, fs); err != nil {
			return s.gen, fmt.Errorf("ovs: apply policy generation %d: %w", p.Generation, err)
		}
		s.applied, s.known, s.dirty, s.sum, s.pid = fs, true, false, sum, pid
	}
	s.ports, s.covered, s.held, s.last, s.pending = ports, covered, map[string]heldPort{}, p, pending
	var errs []error
	if err := d.applyQoS(p); err != nil {
		errs = append(errs, err)
	}
	if err := d.recordPolicy(ctx, st.bridge, p.Generation, sum, pid); err != nil {
		errs = append(errs, err)
	}
	if changed {
		n, err := d.cutRevoked(ctx, p, recs)
		if err != nil {
			errs = append(errs, err)
		}
		d.log.WithFields(logrus.Fields{"generation": p.Generation, "endpoints": len(p.Endpoints), "groups": len(p.Groups),
			"flows": len(fs), "cut": n}).Info("policy applied")
	}
	s.gen = p.Generation
	return s.gen, errors.Join(errs...)
}

// AppliedPolicy implements core.PolicyEnforcer: the generation this driver
// applied, or after a restart the one recorded on the bridge.
func (d *Driver) AppliedPolicy(ctx context.Context) (int64, error) {
	s := d.pol
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen >= 0 {
		return s.gen, nil
	}
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	res, err := d.tx(ctx, true, ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Bridge)}, "external_ids"))
	if err != nil {
		return -1, err
	}
	if len(res[0].Rows) == 0 {
		return -1, nil
	}
	ext, _ := res[0].Rows[0].GetStringMap("external_ids")
	if g, err := strconv.ParseInt(parseKV(ext[extPolicy])["gen"], 10, 64); err == nil && d.ours(ext) {
		return g, nil
	}
	return -1, nil
}

func flowSum(fs map[string]string) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(fs)) {
		h.Write([]byte(fs[k] + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func parseKV(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// writeFlows makes our flows equal to fs in one bundle: the difference from
// what is in force, or (not knowing that) all of ours replaced.
func (d *Driver) writeFlows(ctx context.Context, fs map[string]string) error {
	s := d.pol
	var b strings.Builder
	if !s.known || s.dirty {
		fmt.Fprintf(&b, "delete cookie=%s/-1\n", s.cookie)
		for _, k := range slices.Sorted(maps.Keys(fs)) {
			b.WriteString("add " + fs[k] + "\n")
		}
	} else {
		for _, k := range slices.Sorted(maps.Keys(s.applied)) {
			if _, ok := fs[k]; !ok {
				fmt.Fprintf(&b, "delete_strict cookie=%s/-1,%s\n", s.cookie, k)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(fs)) {
			if s.applied[k] != fs[k] {
				b.WriteString("add " + fs[k] + "\n")
			}
		}
	}
	if b.Len() == 0 {
		return nil
	}
	_, err := d.runOfctl(ctx, b.String(), "--bundle", "add-flows", d.mgmt(), "-")
	return err
}

// recordPolicy notes the generation, digest and vswitchd of the flows in
// force on the bridge, for a restarted agent to find.
func (d *Driver) recordPolicy(ctx context.Context, br *bridgeRow, gen int64, sum, pid string) error {
	v := fmt.Sprintf("gen=%d,sum=%s,pid=%s", gen, sum, pid)
	if br.ext[extPolicy] == v {
		return nil
	}
	where := []ovsdb.Condition{ovsdb.Eq("_uuid", br.uuid)}
	ops := []ovsdb.Operation{ovsdb.Mutate("Bridge", where, ovsdb.Mut("external_ids", "delete", ovsdb.Set{extPolicy})),
		ovsdb.Mutate("Bridge", where, ovsdb.Mut("external_ids", "insert", ovsdb.Map{extPolicy: v})),
		ovsdb.Comment("netplugin: policy generation " + strconv.FormatInt(gen, 10))}
	if _, err := d.tx(ctx, false, ops...); err != nil {
		return fmt.Errorf("record policy generation: %w", err)
	}
	br.ext[extPolicy] = v
	return nil
}

// holdUntilPolicy returns the OpenFlow number to request for a new endpoint
// port (0: vswitchd's choice) and, for an endpoint of a group that the
// policy in force does not cover, first drops its port number and MAC in
// table 0, so that it passes nothing until a policy that lists it is in.
func (d *Driver) holdUntilPolicy(ctx context.Context, ep core.EndpointSpec) (int, error) {
	s := d.pol
	s.mu.Lock()
	defer s.mu.Unlock()
	key := ep.Key()
	group := ""
	if ep.Group != "" {
		group = ep.Tenant + "/" + ep.Group
	}
	if g, ok := s.covered[key]; (ok && g == group) || ep.Group == "" {
		return s.ports[key], nil
	}
	if h, ok := s.held[key]; ok {
		return h.port, nil
	}
	st, err := d.readPolicyRows(ctx)
	if err != nil {
		return 0, err
	}
	n, err := s.portFor(key, st)
	if err != nil {
		return 0, err
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return 0, fmt.Errorf("%w: MAC of %s: %v", core.ErrInvalid, key, err)
	}
	h := heldPort{port: n, mac: mac.String()}
	var flows strings.Builder
	for _, l := range renderFlows(s.cookie, core.HostPolicy{}, nil, map[string]heldPort{key: h}).lines() {
		if strings.Contains(l, "priority=300") {
			flows.WriteString("add " + l + "\n")
		}
	}
	// Added to what is in force, whatever that is; the next SetPolicy
	// rewrites all of ours.
	if _, err := d.runOfctl(ctx, flows.String(), "--bundle", "add-flows", d.mgmt(), "-"); err != nil {
		return 0, fmt.Errorf("hold %s until its policy is in: %w", key, err)
	}
	s.held[key], s.ports[key], s.dirty = h, n, true
	d.log.WithFields(logrus.Fields{"ep": key, "ofport": n, "group": ep.Group}).Debug("endpoint held until its policy is in")
	return n, nil
}

// cutRevoked flushes every tracked connection in the zone of a policed
// network that p would not let start, and returns how many.
func (d *Driver) cutRevoked(ctx context.Context, p core.HostPolicy, recs map[string]netRecord) (int, error) {
	zoneNet := map[int]string{}
	for _, n := range p.Networks {
		if r, ok := recs[n.Key]; ok && n.Policed {
			zoneNet[r.VLAN] = n.Key
		}
	}
	if len(zoneNet) == 0 {
		return 0, nil
	}
	out, err := d.appctl(ctx, "dpctl/dump-conntrack")
	if err != nil {
		return 0, err
	}
	ev := core.NewPolicyEval(p)
	cut := 0
	var errs []error
	for _, line := range strings.Split(out, "\n") {
		c, ok := parseConn(line)
		if !ok {
			continue
		}
		netKey, ok := zoneNet[c.zone]
		if !ok || ev.Allows(netKey, c.src, c.dst, c.proto, c.dport) {
			continue
		}
		if _, err := d.appctl(ctx, "dpctl/flush-conntrack", fmt.Sprintf("zone=%d", c.zone), c.tuple()); err != nil {
			errs = append(errs, err)
			continue
		}
		cut++
	}
	return cut, errors.Join(errs...)
}

// conn is one entry of dpctl/dump-conntrack.
type conn struct {
	proto, zone  int
	src, dst     net.IP
	sport, dport int
	icmp         [3]int // id, type, code
}

// parseConn reads "tcp,orig=(src=A,dst=B,sport=P,dport=Q),reply=(...),zone=Z,...".
func parseConn(line string) (conn, bool) {
	var c conn
	proto, rest, ok := strings.Cut(strings.TrimSpace(line), ",orig=(")
	if !ok {
		return c, false
	}
	switch proto {
	case "tcp":
		c.proto = core.ProtoTCP
	case "udp":
		c.proto = core.ProtoUDP
	case "icmp":
		c.proto = core.ProtoICMP
	default:
		return c, false
	}
	orig, rest, _ := strings.Cut(rest, ")")
	f := parseKV(orig)
	c.src, c.dst = net.ParseIP(f["src"]).To4(), net.ParseIP(f["dst"]).To4()
	c.sport, _ = strconv.Atoi(f["sport"])
	c.dport, _ = strconv.Atoi(f["dport"])
	c.icmp[0], _ = strconv.Atoi(f["id"])
	c.icmp[1], _ = strconv.Atoi(f["type"])
	c.icmp[2], _ = strconv.Atoi(f["code"])
	if i := strings.Index(rest, "zone="); i >= 0 {
		z := rest[i+5:]
		if j := strings.IndexByte(z, ','); j >= 0 {
			z = z[:j]
		}
		c.zone, _ = strconv.Atoi(z)
	}
	if c.proto == core.ProtoICMP {
		c.dport = 0
	}
	return c, c.src != nil && c.dst != nil
}

// tuple is the original direction as dpctl/flush-conntrack takes it.
func (c conn) tuple() string {
	t := fmt.Sprintf("ct_nw_src=%s,ct_nw_dst=%s,ct_nw_proto=%d", c.src, c.dst, c.proto)
	if c.proto == core.ProtoICMP {
		return t + fmt.Sprintf(",icmp_id=%d,icmp_type=%d,icmp_code=%d", c.icmp[0], c.icmp[1], c.icmp[2])
	}
	return t + fmt.Sprintf(",ct_tp_src=%d,ct_tp_dst=%d", c.sport, c.dport)
}

// policyPort is the OpenFlow number known for endpoint key (0: none).
func (d *Driver) policyPort(key string) int {
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	return d.pol.ports[key]
}
