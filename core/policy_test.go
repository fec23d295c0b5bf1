package core

import (
	"errors"
	"fmt"
	"math/rand"
	"net"
	"strings"
	"testing"
)

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{
		"10mbit": 10_000_000, "10MBIT": 10_000_000, "500kbit": 500_000, "1.5gbit": 1_500_000_000,
		"250000": 250_000, "8000bit": 8000, "100gbit": 100_000_000_000,
	} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"10mbps": "bytes per second", "10 megabit": "bit, kbit", "": "bits per second", "-1mbit": "bits per second",
		"1bit": "outside", "101gbit": "outside", "mbit": "bits per second",
	} {
		if _, err := ParseRate(in); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseRate(%q): %v, want an error saying %q", in, err, msg)
		}
	}
}

func TestParsePortsAndProtocols(t *testing.T) {
	for in, want := range map[string]PortRange{"": {}, "80": {80, 80}, "1000-2000": {1000, 2000}, "65535": {65535, 65535}} {
		if got, err := ParsePortRange(in); err != nil || got != want {
			t.Errorf("ParsePortRange(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"0", "65536", "20-10", "a", "1-", "-5", "1-2-3"} {
		if _, err := ParsePortRange(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePortRange(%q): %v", in, err)
		}
	}
	for in, want := range map[string]int{"": 0, "tcp": 6, "UDP": 17, "icmp": 1, "47": 47} {
		if got, err := ParseProtocol(in); err != nil || got != want {
			t.Errorf("ParseProtocol(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"0", "256", "sctpx"} {
		if _, err := ParseProtocol(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseProtocol(%q): %v", in, err)
		}
	}
}

// Every bad rule is refused with a line that says what is wrong.
func TestValidateRuleErrors(t *testing.T) {
	ok := Rule{Name: "r", Priority: 10, Direction: DirIn, Action: ActionAllow, FromGroup: "web", Protocol: "tcp", Port: "80"}
	if err := ValidateRule(ok); err != nil {
		t.Fatal(err)
	}
	for msg, mod := range map[string]func(*Rule){
		"priority 0 outside 1-100":         func(r *Rule) { r.Priority = 0 },
		"priority 101 outside":             func(r *Rule) { r.Priority = 101 },
		`direction "both"`:                 func(r *Rule) { r.Direction = "both" },
		`action "permit"`:                  func(r *Rule) { r.Action = "permit" },
		"names its peer with from*":        func(r *Rule) { r.ToGroup = "db" },
		"names its peer with to*":          func(r *Rule) { r.Direction = DirOut },
		"at most one peer":                 func(r *Rule) { r.FromIP = "10.0.0.0/8" },
		"host bits set":                    func(r *Rule) { r.FromGroup, r.FromIP = "", "10.0.0.1/8" },
		"a port needs protocol tcp or udp": func(r *Rule) { r.Protocol = "icmp" },
		"port \"0\"":                       func(r *Rule) { r.Port = "0" },
		"rule name":                        func(r *Rule) { r.Name = "a b" },
		"group name":                       func(r *Rule) { r.FromGroup = "x/y" },
	} {
		r := ok
		mod(&r)
		err := ValidateRule(r)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), msg) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got %v", msg, err)
		}
	}
}

func TestCheckTies(t *testing.T) {
	r := func(name, action, peerGroup, ip, proto, port string) Rule {
		return Rule{Name: name, Priority: 5, Direction: DirIn, Action: action, FromGroup: peerGroup, FromIP: ip, Protocol: proto, Port: port}
	}
	for _, c := range []struct {
		a, b     Rule
		conflict bool
	}{
		{r("a", "allow", "web", "", "tcp", "80"), r("b", "deny", "web", "", "tcp", "80"), true},
		{r("a", "allow", "web", "", "tcp", "80"), r("b", "deny", "web", "", "tcp", "81"), false},
		{r("a", "allow", "web", "", "tcp", "80-90"), r("b", "deny", "web", "", "tcp", "90-95"), true},
		{r("a", "allow", "web", "", "tcp", ""), r("b", "deny", "web", "", "udp", ""), false},
		{r("a", "allow", "web", "", "", ""), r("b", "deny", "web", "", "udp", "53"), true},
		{r("a", "allow", "web", "", "tcp", "80"), r("b", "deny", "db", "", "tcp", "80"), false},
		{r("a", "allow", "web", "", "tcp", "80"), r("b", "deny", "", "10.0.0.0/8", "tcp", "80"), true},
		{r("a", "allow", "", "10.1.0.0/16", "tcp", "80"), r("b", "deny", "", "10.2.0.0/16", "tcp", "80"), false},
		{r("a", "allow", "", "10.1.0.0/16", "tcp", "80"), r("b", "deny", "", "10.1.2.3", "tcp", "80"), true},
		{r("a", "allow", "web", "", "tcp", "80"), r("b", "allow", "web", "", "tcp", "80"), false},
	} {
		err := CheckTies("p", []Policy{{Tenant: "t", Name: "p", Rules: []Rule{c.a, c.b}}})
		if (err != nil) != c.conflict {
			t.Errorf("%+v vs %+v: %v, want conflict %v", c.a, c.b, err, c.conflict)
		}
		if err != nil && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "give them different priorities")) {
			t.Errorf("tie error: %v", err)
		}
		other := c.b
		other.Priority = 6
		if err := CheckTies("p", []Policy{{Tenant: "t", Name: "p", Rules: []Rule{c.a, other}}}); err != nil {
			t.Errorf("different priorities: %v", err)
		}
	}
}

func TestValidateGroupAndProfile(t *testing.T) {
	for _, drv := range []string{"macvlan", "ipvlan", "hostnic"} {
		n := Network{Tenant: "t", Name: "n", Driver: drv}
		err := ValidateGroup(Group{Tenant: "t", Name: "g", Network: "n", Policies: []string{"p"}}, n)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "uses driver "+drv) {
			t.Errorf("%s: %v", drv, err)
		}
		if err := ValidateGroup(Group{Tenant: "t", Name: "g", Network: "n", Profile: "q"}, n); err == nil {
			t.Errorf("%s: a profile accepted", drv)
		}
		if err := ValidateGroup(Group{Tenant: "t", Name: "g", Network: "n"}, n); err != nil {
			t.Errorf("%s: a group without policy refused: %v", drv, err)
		}
	}
	for _, drv := range []string{"linuxbridge", "ovs"} {
		if err := ValidateGroup(Group{Tenant: "t", Name: "g", Network: "n", Policies: []string{"p"}}, Network{Tenant: "t", Name: "n", Driver: drv}); err != nil {
			t.Errorf("%s: %v", drv, err)
		}
	}
	dscp := func(v int) *int { return &v }
	q, err := Profile{Tenant: "t", Name: "p", BandwidthIn: "10mbit", BandwidthOut: "2mbit", DSCP: dscp(46)}.QoS()
	if err != nil || q.RateIn != 10_000_000 || q.RateOut != 2_000_000 || q.DSCP != 46 || q.BurstFor(q.RateIn) != 25_000 || q.BurstFor(q.RateOut) != 16384 {
		t.Fatalf("QoS %+v %v", q, err)
	}
	for msg, p := range map[string]Profile{
		"sets neither":        {},
		"DSCP 64":             {DSCP: dscp(64)},
		"burst -1":            {BandwidthIn: "1mbit", Burst: -1},
		"a burst needs":       {Burst: 1000, DSCP: dscp(1)},
		"bandwidth out: inva": {BandwidthOut: "fast"},
	} {
		p.Tenant, p.Name = "t", "p"
		if err := ValidateProfile(p); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v", msg, err)
		}
	}
}

// A hand-checked model: priorities decide, a direction without rules stays
// open, a direction with rules is closed to what they do not allow, and a
// group that cannot be compiled is closed.
func TestVerdictSemantics(t *testing.T) {
	m := PolicyModel{
		Networks: []Network{{Tenant: "t", Name: "n", Driver: "linuxbridge", Subnet: "10.0.0.0/24"}},
		Groups: []Group{
			{Tenant: "t", Name: "web", Network: "n", Policies: []string{"webin"}},
			{Tenant: "t", Name: "db", Network: "n", Policies: []string{"dbin"}},
			{Tenant: "t", Name: "cli", Network: "n", Policies: []string{"cliout"}},
			{Tenant: "t", Name: "open", Network: "n"},
			{Tenant: "t", Name: "broken", Network: "n", Policies: []string{"missing"}},
		},
		Policies: []Policy{
			{Tenant: "t", Name: "webin", Rules: []Rule{
				{Name: "http", Priority: 10, Direction: DirIn, Action: ActionAllow, Protocol: "tcp", Port: "80"},
				{Name: "nocli", Priority: 20, Direction: DirIn, Action: ActionDeny, FromGroup: "cli", Protocol: "tcp", Port: "80-81"},
			}},
			{Tenant: "t", Name: "dbin", Rules: []Rule{
				{Name: "fromweb", Priority: 10, Direction: DirIn, Action: ActionAllow, FromGroup: "web", Protocol: "tcp", Port: "5432"},
			}},
			{Tenant: "t", Name: "cliout", Rules: []Rule{
				{Name: "anyweb", Priority: 5, Direction: DirOut, Action: ActionAllow, ToGroup: "web"},
				{Name: "net", Priority: 1, Direction: DirOut, Action: ActionAllow, ToIP: "10.0.0.64/26", Protocol: "udp"},
			}},
		},
	}
	ep := func(name, ip, group string) Endpoint {
		return Endpoint{Tenant: "t", Network: "n", Name: name, IP: ip, Host: "h1", Group: group}
	}
	web, db, cli, open, broken, none := ep("web", "10.0.0.1", "web"), ep("db", "10.0.0.2", "db"), ep("cli", "10.0.0.3", "cli"),
		ep("open", "10.0.0.70", "open"), ep("broken", "10.0.0.5", "broken"), ep("none", "10.0.0.6", "")
	m.Endpoints = []Endpoint{web, db, cli, open, broken, none}
	for _, c := range []struct {
		src, dst    Endpoint
		proto, port int
		want        bool
	}{
		{none, web, ProtoTCP, 80, true},     // http allowed in
		{none, web, ProtoTCP, 81, false},    // web is isolated inbound
		{web, none, ProtoTCP, 81, true},     // web's outbound is open
		{cli, web, ProtoTCP, 80, false},     // nocli (20) beats http (10)
		{cli, web, ProtoTCP, 443, false},    // cli may go out to web, web does not let 443 in
		{cli, web, ProtoUDP, 53, false},     // nor udp
		{web, db, ProtoTCP, 5432, true},     // fromweb
		{none, db, ProtoTCP, 5432, false},   // only web
		{web, db, ProtoTCP, 5433, false},    // only 5432
		{cli, open, ProtoUDP, 53, true},     // cli's net rule, open has no rules
		{cli, open, ProtoTCP, 53, false},    // net is udp only
		{cli, none, ProtoICMP, 0, false},    // cli is isolated outbound
		{none, open, ProtoICMP, 0, true},    // no policies on either side
		{none, broken, ProtoICMP, 0, false}, // broken is closed
		{broken, none, ProtoICMP, 0, false},
	} {
		if got := m.Verdict(c.src, c.dst, c.proto, c.port); got != c.want {
			t.Errorf("%s -> %s %d/%d: %v, want %v", c.src.Name, c.dst.Name, c.proto, c.port, got, c.want)
		}
	}
	hp, errs := CompileHost(m, "h1", "linuxbridge")
	if len(errs) != 1 || !errors.Is(errs[0], ErrNotFound) || !strings.Contains(errs[0].Error(), "policy t/missing does not exist") {
		t.Fatalf("compile errors: %v", errs)
	}
	if len(hp.Endpoints) != 6 || len(hp.Networks) != 1 || !hp.Networks[0].Policed {
		t.Fatalf("host policy: %+v", hp)
	}
	if got := hp.Members["t/web"]; len(got) != 1 || got[0] != "10.0.0.1" {
		t.Fatalf("members of web: %v", hp.Members)
	}
}

// The compiled HostPolicy of every host, evaluated as drivers evaluate it
// (egress at the source's host, ingress at the destination's), agrees with
// the model's Verdict on random models.
func TestCompiledMatchesVerdict(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	allowed, denied := 0, 0
	defer func() {
		if allowed < 1000 || denied < 1000 {
			t.Errorf("too one-sided a sample: %d allowed, %d denied", allowed, denied)
		}
	}()
	for iter := 0; iter < 300; iter++ {
		m := randomModel(rnd)
		evals := map[string]*PolicyEval{}
		for _, h := range []string{"h1", "h2"} {
			hp, _ := CompileHost(m, h, "linuxbridge")
			evals[h] = NewPolicyEval(hp)
		}
		for _, s := range m.Endpoints {
			for _, d := range m.Endpoints {
				if s.Name == d.Name {
					continue
				}
				for _, pp := range [][2]int{{ProtoTCP, 80}, {ProtoTCP, 443}, {ProtoUDP, 53}, {ProtoICMP, 0}, {ProtoTCP, 8080}} {
					want := m.Verdict(s, d, pp[0], pp[1])
					if want {
						allowed++
					} else {
						denied++
					}
					si, di := net.ParseIP(s.IP), net.ParseIP(d.IP)
					got := evals[s.Host].Allows(s.NetworkKey(), si, di, pp[0], pp[1]) && evals[d.Host].Allows(d.NetworkKey(), si, di, pp[0], pp[1])
					if got != want {
						t.Fatalf("iteration %d: %s(%s) -> %s(%s) %v: compiled %v, verdict %v\nmodel %+v", iter, s.Name, s.Group, d.Name, d.Group, pp, got, want, m)
					}
				}
			}
		}
	}
}

func randomModel(rnd *rand.Rand) PolicyModel {
	m := PolicyModel{Networks: []Network{{Tenant: "t", Name: "n", Driver: "linuxbridge", Subnet: "10.0.0.0/24"}}}
	groups := []string{"a", "b", "c"}
	for i, g := range groups {
		pol := fmt.Sprintf("p%d", i)
		m.Groups = append(m.Groups, Group{Tenant: "t", Name: g, Network: "n", Policies: []string{pol}})
		p := Policy{Tenant: "t", Name: pol}
		for j := 0; j < rnd.Intn(5); j++ {
			r := Rule{Name: fmt.Sprintf("r%d", j), Priority: 1 + rnd.Intn(4), Direction: []string{DirIn, DirOut}[rnd.Intn(2)],
				Action: []string{ActionAllow, ActionDeny}[rnd.Intn(2)]}
			switch rnd.Intn(3) {
			case 0:
				r.Protocol, r.Port = "tcp", []string{"80", "80-443", "1-1000"}[rnd.Intn(3)]
			case 1:
				r.Protocol = []string{"udp", "icmp"}[rnd.Intn(2)]
			}
			peer := []string{"", groups[rnd.Intn(3)], "10.0.0.0/25", "10.0.0.128/25"}[rnd.Intn(4)]
			switch {
			case strings.Contains(peer, "/") && r.Direction == DirIn:
				r.FromIP = peer
			case strings.Contains(peer, "/"):
				r.ToIP = peer
			case r.Direction == DirIn:
				r.FromGroup = peer
			default:
				r.ToGroup = peer
			}
			p.Rules = append(p.Rules, r)
		}
		if CheckTies("", []Policy{p}) != nil {
			p.Rules = nil // tied rules are refused at write time
		}
		m.Policies = append(m.Policies, p)
	}
	for i := 0; i < 6; i++ {
		m.Endpoints = append(m.Endpoints, Endpoint{Tenant: "t", Network: "n", Name: fmt.Sprintf("e%d", i),
			IP: fmt.Sprintf("10.0.0.%d", 1+rnd.Intn(254)), Host: []string{"h1", "h2"}[i%2],
			Group: []string{"", "a", "b", "c"}[rnd.Intn(4)]})
	}
	seen := map[string]bool{}
	for i := range m.Endpoints { // distinct addresses
		for seen[m.Endpoints[i].IP] {
			m.Endpoints[i].IP = fmt.Sprintf("10.0.0.%d", 1+rnd.Intn(254))
		}
		seen[m.Endpoints[i].IP] = true
	}
	return m
}

// TestCompilePolicedElsewhere: a network that another host's group polices
// (PolicyModel.Policed) lists this host's endpoints of it, groupless ones
// included, so that they are kept to their own addresses; without it a
// groupless endpoint is not listed.
func TestCompilePolicedElsewhere(t *testing.T) {
	m := PolicyModel{Generation: 3,
		Networks:  []Network{{Tenant: "t", Name: "n", Driver: "linuxbridge", Subnet: "10.1.0.0/24"}},
		Groups:    []Group{{Tenant: "t", Name: "far", Network: "n"}},
		Endpoints: []Endpoint{{Tenant: "t", Network: "n", Name: "e", IP: "10.1.0.2", MAC: "02:00:00:00:00:02", Host: "h"}}}
	if hp, errs := CompileHost(m, "h", "linuxbridge"); len(errs) > 0 || len(hp.Endpoints) != 0 {
		t.Fatalf("unpoliced: %+v %v", hp, errs)
	}
	m.Policed = []string{"t/n"}
	hp, errs := CompileHost(m, "h", "linuxbridge")
	if len(errs) > 0 || len(hp.Endpoints) != 1 || len(hp.Networks) != 1 || !hp.Networks[0].Policed {
		t.Fatalf("policed elsewhere: %+v %v", hp, errs)
	}
	if hp, _ := CompileHost(m, "h", "ovs"); len(hp.Endpoints) != 0 {
		t.Fatalf("another driver's network policed: %+v", hp)
	}
}
