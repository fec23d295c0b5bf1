package main

// Policy constructs: policy, rule, netprofile, group.

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// policyFlags are the flags of the policy constructs.
func policyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "policy", Usage: "policy of a rule; policies of a group (repeatable or comma separated)"},
		&cli.IntFlag{Name: "priority", Usage: "rule priority 1-100, higher wins"},
		&cli.StringFlag{Name: "direction", Usage: "rule direction: in (to the group) or out (from it)"},
		&cli.StringFlag{Name: "action", Usage: "rule action: allow or deny"},
		&cli.StringFlag{Name: "from-group", Usage: "peer group of an in rule"},
		&cli.StringFlag{Name: "to-group", Usage: "peer group of an out rule"},
		&cli.StringFlag{Name: "from-network", Usage: "peer network of an in rule"},
		&cli.StringFlag{Name: "to-network", Usage: "peer network of an out rule"},
		&cli.StringFlag{Name: "from-ip", Usage: "peer CIDR of an in rule"},
		&cli.StringFlag{Name: "to-ip", Usage: "peer CIDR of an out rule"},
		&cli.StringFlag{Name: "protocol", Usage: "tcp, udp, icmp or 1-255; empty: any"},
		&cli.StringFlag{Name: "port", Usage: "destination port N or N-M (tcp, udp); empty: any"},
		&cli.StringFlag{Name: "bandwidth", Usage: "netprofile rate both ways, e.g. 10mbit"},
		&cli.StringFlag{Name: "bandwidth-in", Usage: "netprofile rate into the endpoint"},
		&cli.StringFlag{Name: "bandwidth-out", Usage: "netprofile rate out of the endpoint"},
		&cli.StringFlag{Name: "burst", Usage: "netprofile burst in bytes, kb or mb (1024s), e.g. 64kb"},
		&cli.IntFlag{Name: "dscp", Usage: "netprofile DSCP 0-63 marked on traffic from the endpoint"},
		&cli.StringFlag{Name: "netprofile", Usage: "netprofile of a group"},
		&cli.StringFlag{Name: "group", Usage: "group of an endpoint (in its tenant and network)"},
	}
}

// policyHandlers are the opers of the policy constructs.
func (m *command) policyHandlers() map[[2]string]func(context.Context) error {
	return map[[2]string]func(context.Context) error{
		{"create", "policy"}: m.createPolicy, {"get", "policy"}: m.getPolicies, {"delete", "policy"}: m.deletePolicy,
		{"create", "rule"}: m.createRule, {"get", "rule"}: m.getPolicies, {"delete", "rule"}: m.deleteRule,
		{"create", "netprofile"}: m.createProfile, {"get", "netprofile"}: m.getProfiles, {"delete", "netprofile"}: m.deleteProfile,
		{"create", "group"}: m.createGroup, {"get", "group"}: m.getGroups, {"delete", "group"}: m.deleteGroup,
	}
}

func (m *command) tenant() string { return m.c.String("tenant") }

func (m *command) createPolicy(ctx context.Context) error {
	p := core.Policy{Tenant: m.tenant(), Name: m.name}
	if _, err := m.s.CreatePolicy(ctx, p); err != nil {
		return err
	}
	p, _, err := m.s.GetPolicy(ctx, p.Tenant, p.Name)
	if err != nil {
		return err
	}
	return m.printPolicies([]core.Policy{p})
}

// onePolicy is the policy a rule command names with -policy.
func (m *command) onePolicy() (string, error) {
	ps := m.c.StringSlice("policy")
	if len(ps) != 1 {
		return "", fmt.Errorf("%w: a rule needs exactly one -policy", core.ErrInvalid)
	}
	return ps[0], nil
}

func (m *command) createRule(ctx context.Context) error {
	pol, err := m.onePolicy()
	if err != nil {
		return err
	}
	r := core.Rule{Name: m.name, Priority: m.c.Int("priority"), Direction: m.c.String("direction"), Action: m.c.String("action"),
		FromGroup: m.c.String("from-group"), ToGroup: m.c.String("to-group"), FromNetwork: m.c.String("from-network"),
		ToNetwork: m.c.String("to-network"), FromIP: m.c.String("from-ip"), ToIP: m.c.String("to-ip"),
		Protocol: m.c.String("protocol"), Port: m.c.String("port")}
	if _, err := m.s.AddRule(ctx, m.tenant(), pol, r); err != nil {
		return err
	}
	p, _, err := m.s.GetPolicy(ctx, m.tenant(), pol)
	if err != nil {
		return err
	}
	return m.printPolicies([]core.Policy{p})
}

func (m *command) deleteRule(ctx context.Context) error {
	pol, err := m.onePolicy()
	if err != nil {
		return err
	}
	_, err = m.s.DeleteRule(ctx, m.tenant(), pol, m.name)
	return err
}

func (m *command) getPolicies(ctx context.Context) error {
	name := m.name
	if m.c.String("construct") == "rule" {
		if name, _ = m.onePolicy(); name == "" {
			return fmt.Errorf("%w: -oper get -construct rule needs -policy", core.ErrInvalid)
		}
	}
	if name != "" {
		p, _, err := m.s.GetPolicy(ctx, m.tenant(), name)
		if err != nil {
			return err
		}
		return m.printPolicies([]core.Policy{p})
	}
	ps, err := m.s.Policies(ctx, m.tenant())
	if err != nil {
		return err
	}
	return m.printPolicies(ps)
}

func (m *command) deletePolicy(ctx context.Context) error {
	return m.s.DeletePolicy(ctx, m.tenant(), m.name)
}

func (m *command) printPolicies(ps []core.Policy) error {
	if m.c.Bool("json") {
		return m.printJSON(ps)
	}
	rows := [][]string{}
	for _, p := range ps {
		if len(p.Rules) == 0 {
			rows = append(rows, []string{p.Tenant, p.Name, "-", "", "", "", "", "", ""})
		}
		rules := append([]core.Rule(nil), p.Rules...)
		sort.SliceStable(rules, func(i, j int) bool { return rules[i].Priority > rules[j].Priority })
		for _, r := range rules {
			rows = append(rows, []string{p.Tenant, p.Name, r.Name, strconv.Itoa(r.Priority), r.Direction, r.Action,
				peerText(r), dash(r.Protocol), dash(r.Port)})
		}
	}
	return m.table("TENANT\tPOLICY\tRULE\tPRIORITY\tDIRECTION\tACTION\tPEER\tPROTOCOL\tPORT", rows)
}

func peerText(r core.Rule) string {
	for _, f := range [][2]string{{"group ", r.FromGroup + r.ToGroup}, {"network ", r.FromNetwork + r.ToNetwork}, {"", r.FromIP + r.ToIP}} {
		if f[1] != "" {
			return f[0] + f[1]
		}
	}
	return "any"
}

// parseBytes parses a size: N, Nkb or Nmb (1024s; k, m, kib, mib too).
func parseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"kb", 1 << 10}, {"mb", 1 << 20}, {"k", 1 << 10}, {"m", 1 << 20}, {"b", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n < 0 || n > core.MaxBurst/mult {
		return 0, fmt.Errorf("%w: -burst %q: want bytes, kb or mb up to 256mb", core.ErrInvalid, s)
	}
	return n * mult, nil
}

func (m *command) createProfile(ctx context.Context) error {
	p := core.Profile{Tenant: m.tenant(), Name: m.name, BandwidthIn: m.c.String("bandwidth"), BandwidthOut: m.c.String("bandwidth")}
	if v := m.c.String("bandwidth-in"); v != "" {
		p.BandwidthIn = v
	}
	if v := m.c.String("bandwidth-out"); v != "" {
		p.BandwidthOut = v
	}
	if v := m.c.String("burst"); v != "" {
		b, err := parseBytes(v)
		if err != nil {
			return err
		}
		p.Burst = b
	}
	if m.c.IsSet("dscp") {
		d := m.c.Int("dscp")
		p.DSCP = &d
	}
	if _, err := m.s.CreateProfile(ctx, p); err != nil {
		return err
	}
	return m.printProfiles([]core.Profile{p})
}

func (m *command) getProfiles(ctx context.Context) error {
	if m.name != "" {
		p, _, err := m.s.GetProfile(ctx, m.tenant(), m.name)
		if err != nil {
			return err
		}
		return m.printProfiles([]core.Profile{p})
	}
	ps, err := m.s.Profiles(ctx, m.tenant())
	if err != nil {
		return err
	}
	return m.printProfiles(ps)
}

func (m *command) deleteProfile(ctx context.Context) error {
	return m.s.DeleteProfile(ctx, m.tenant(), m.name)
}

func (m *command) printProfiles(ps []core.Profile) error {
	if m.c.Bool("json") {
		return m.printJSON(ps)
	}
	rows := [][]string{}
	for _, p := range ps {
		burst, d := "-", "-"
		if p.Burst > 0 {
			burst = strconv.FormatInt(p.Burst, 10)
		}
		if p.DSCP != nil {
			d = strconv.Itoa(*p.DSCP)
		}
		rows = append(rows, []string{p.Tenant, p.Name, dash(p.BandwidthIn), dash(p.BandwidthOut), burst, d})
	}
	return m.table("TENANT\tNETPROFILE\tBANDWIDTH IN\tBANDWIDTH OUT\tBURST\tDSCP", rows)
}

func (m *command) createGroup(ctx context.Context) error {
	g := core.Group{Tenant: m.tenant(), Name: m.name, Network: m.c.String("net-id"), Policies: m.c.StringSlice("policy"),
		Profile: m.c.String("netprofile")}
	if _, err := m.s.CreateGroup(ctx, g); err != nil {
		return err
	}
	return m.printGroups(ctx, []core.Group{g})
}

func (m *command) getGroups(ctx context.Context) error {
	if m.name != "" {
		g, _, err := m.s.GetGroup(ctx, m.tenant(), m.name)
		if err != nil {
			return err
		}
		return m.printGroups(ctx, []core.Group{g})
	}
	gs, err := m.s.Groups(ctx, m.tenant())
	if err != nil {
		return err
	}
	return m.printGroups(ctx, gs)
}

func (m *command) deleteGroup(ctx context.Context) error {
	return m.s.DeleteGroup(ctx, m.tenant(), m.name)
}

// groupView is a group as get shows it: its members and, per host of a
// member, the policy generation the host reports in force.
type groupView struct {
	core.Group
	Members []groupMember                 `json:"members"`
	Hosts   map[string]state.PolicyStatus `json:"hosts"`
}

type groupMember struct {
	Name string `json:"name"`
	IP   string `json:"ip"`
	Host string `json:"host"`
}

func (m *command) printGroups(ctx context.Context, gs []core.Group) error {
	views := make([]groupView, len(gs))
	var hosts []string
	seen := map[string]bool{}
	for i, g := range gs {
		eps, err := m.s.GroupMembers(ctx, g.Tenant, g.Name)
		if err != nil {
			return err
		}
		views[i] = groupView{Group: g, Members: []groupMember{}, Hosts: map[string]state.PolicyStatus{}}
		for _, e := range eps {
			views[i].Members = append(views[i].Members, groupMember{Name: e.Name, IP: e.IP, Host: e.Host})
			if e.Host != "" && !seen[e.Host] {
				seen[e.Host] = true
				hosts = append(hosts, e.Host)
			}
		}
	}
	status, err := m.s.PolicyStatuses(ctx, hosts...)
	if err != nil {
		return err
	}
	for i := range views {
		for _, mb := range views[i].Members {
			if ps, ok := status[mb.Host]; ok {
				views[i].Hosts[mb.Host] = ps
			}
		}
	}
	if m.c.Bool("json") {
		return m.printJSON(views)
	}
	rows := [][]string{}
	for _, v := range views {
		var members []string
		hs := map[string]bool{}
		for _, mb := range v.Members {
			members = append(members, mb.Name+"("+mb.IP+"@"+mb.Host+")")
			hs[mb.Host] = true
		}
		var applied []string
		for _, h := range sortedHosts(hs) {
			ps, ok := v.Hosts[h]
			switch {
			case !ok:
				applied = append(applied, h+": no policy reported")
			case len(ps.Errors) > 0:
				applied = append(applied, fmt.Sprintf("%s: policy gen %d applied, %d problems (closed): %s", h, ps.Generation, len(ps.Errors), strings.Join(ps.Errors, "; ")))
			default:
				applied = append(applied, fmt.Sprintf("%s: policy gen %d applied", h, ps.Generation))
			}
		}
		rows = append(rows, []string{v.Tenant, v.Name, v.Network, dash(strings.Join(v.Policies, ",")), dash(v.Profile),
			dash(strings.Join(members, ",")), dash(strings.Join(applied, ", "))})
	}
	return m.table("TENANT\tGROUP\tNETWORK\tPOLICIES\tNETPROFILE\tMEMBERS\tHOSTS", rows)
}

func sortedHosts(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for h := range m {
		if h != "" {
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out
}
