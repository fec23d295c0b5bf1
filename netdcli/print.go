package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/netplugin/netplugin/core"
)

func (m *command) printJSON(v any) error {
	enc := json.NewEncoder(m.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (m *command) table(header string, rows [][]string) error {
	w := tabwriter.NewWriter(m.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

func (m *command) printGlobal(g core.Global) error {
	if m.c.Bool("json") {
		return m.printJSON(g)
	}
	return m.table("VLANS\tVXLANS\tDRIVER\tTAG TYPE\tSUBNET POOL\tSUBNET LEN",
		[][]string{{g.VLANs, g.VXLANs, g.DefaultDriver, g.TagType(""), g.SubnetPool, fmt.Sprint(g.SubnetLen)}})
}

func (m *command) printTenants(ts []core.Tenant) error {
	if m.c.Bool("json") {
		return m.printJSON(ts)
	}
	rows := [][]string{}
	for _, t := range ts {
		rows = append(rows, []string{t.Name})
	}
	return m.table("TENANT", rows)
}

// networkView is a network with its endpoints' count, as `get` shows it.
type networkView struct {
	core.Network
	Endpoints int `json:"endpoints"`
}

func (m *command) printNetworks(ctx context.Context, ns []core.Network) error {
	keys := make([]string, len(ns))
	for i, n := range ns {
		keys[i] = n.Key()
	}
	count, err := m.s.EndpointCounts(ctx, keys...)
	if err != nil {
		return err
	}
	views := make([]networkView, len(ns))
	for i, n := range ns {
		views[i] = networkView{n, count[n.Key()]}
	}
	if m.c.Bool("json") {
		return m.printJSON(views)
	}
	rows := [][]string{}
	for _, v := range views {
		tag := fmt.Sprint(v.Tag)
		if v.TagAuto {
			tag += " (auto)"
		}
		rows = append(rows, []string{v.Tenant, v.Name, v.Driver, v.Encap, tag, v.Subnet, dash(v.Gateway), fmt.Sprint(v.Endpoints)})
	}
	return m.table("TENANT\tNETWORK\tDRIVER\tENCAP\tTAG\tSUBNET\tGATEWAY\tENDPOINTS", rows)
}

// endpointView is an endpoint with what every host observed of it.
type endpointView struct {
	core.Endpoint
	Status map[string]core.EndpointStatus `json:"status"`
	// HostGone: no agent of the endpoint's host is registered (its lease
	// expired). The endpoint keeps its address until `delete -construct host`.
	HostGone bool `json:"hostGone,omitempty"`
}

func (m *command) printEndpoints(ctx context.Context, eps []core.Endpoint) error {
	keys := make([]string, len(eps))
	for i, e := range eps {
		keys[i] = e.Key()
	}
	all, err := m.s.StatusOf(ctx, keys...)
	if err != nil {
		return err
	}
	var names []string
	seen := map[string]bool{}
	for _, e := range eps {
		if e.Host != "" && !seen[e.Host] {
			seen[e.Host] = true
			names = append(names, e.Host)
		}
	}
	live, err := m.s.LiveHosts(ctx, names...)
	if err != nil {
		return err
	}
	views := make([]endpointView, len(eps))
	for i, e := range eps {
		views[i] = endpointView{Endpoint: e, Status: all[e.Key()], HostGone: e.Host != "" && !live[e.Host]}
		if views[i].Status == nil {
			views[i].Status = map[string]core.EndpointStatus{}
		}
	}
	if m.c.Bool("json") {
		return m.printJSON(views)
	}
	rows := [][]string{}
	for _, v := range views {
		target := v.ContainerName
		if target == "" {
			target = v.ContainerID
		}
		if v.NetNS != "" {
			target = "netns:" + v.NetNS
		}
		rows = append(rows, []string{v.Tenant, v.Name, v.Network, v.IP, v.MAC, v.Host, dash(target), statusText(v)})
	}
	return m.table("TENANT\tENDPOINT\tNETWORK\tIP\tMAC\tHOST\tATTACHED TO\tSTATUS", rows)
}

// statusText renders "up@h1", "error@h1: why", or what is expected when no host
// has reported yet.
func statusText(v endpointView) string {
	if v.HostGone && v.Attached() && len(v.Status) == 0 {
		return "host gone: no agent of " + v.Host + " is registered (`netdcli -oper delete -construct host " + v.Host + "` frees its endpoints)"
	}
	if len(v.Status) == 0 {
		if !v.Attached() {
			return "reserved"
		}
		return "pending (no report from " + v.Host + ")"
	}
	hosts := make([]string, 0, len(v.Status))
	for h := range v.Status {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	parts := make([]string, 0, len(hosts))
	for _, h := range hosts {
		st := v.Status[h]
		s := st.State + "@" + h
		if st.Error != "" {
			s += ": " + st.Error
		}
		if st.Note != "" {
			s += " (" + st.Note + ")"
		}
		if !v.Attached() || h != v.Host {
			s += " (being removed)" // the host has not caught up with a detach or move yet
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
