package ovs

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
)

// flowCookie marks every flow we program ("np"), so a dump tells ours apart.
const flowCookie = "0x6e70"

// wantTunnels maps tunnel port name to peer for every host that shares a
// VXLAN network of recs with this host, or is nil while the remotes are not
// known yet (then existing tunnel ports are kept as they are). A host with no
// network in common gets no tunnel: nothing of ours is sent to it, and
// nothing from it is accepted.
func (d *Driver) wantTunnels(recs map[string]netRecord) map[string]core.Peer {
	if !d.remotesKnown {
		return nil
	}
	want := map[string]core.Peer{}
	for key, r := range recs {
		if r.Encap != core.EncapVXLAN {
			continue
		}
		for _, h := range d.remotes[key].Hosts {
			if _, dup := want[tunnelName(h.VTEP)]; !dup {
				want[tunnelName(h.VTEP)] = h
			}
		}
	}
	return want
}

func (d *Driver) tunnelOptions(remote string) map[string]string {
	// key=flow: one port per peer carries every VNI, the flows set the key.
	return map[string]string{"remote_ip": remote, "local_ip": d.cfg.VTEP, "key": "flow"}
}

// tunnelOps adds to t what the tunnel bridge needs: the bridge itself (in
// fail_mode secure, so that it drops everything until our flows are in instead
// of flooding between tunnels), its patch port, and one VXLAN port per peer
// that shares a network with this host.
func (d *Driver) tunnelOps(t *txn, st *infraState, recs map[string]netRecord) {
	var ports []ovsdb.NamedUUID
	if st.tunPatch == nil {
		ports = append(ports, t.port(d.tunPatch(), d.marks(rolePatch), nil,
			ovsdb.Row{"type": "patch", "options": ovsdb.StringMap(map[string]string{"peer": d.intPatch()})}))
	}
	if want := d.wantTunnels(recs); want != nil {
		for _, name := range slices.Sorted(maps.Keys(want)) {
			p, opts := want[name], d.tunnelOptions(want[name].VTEP)
			if _, ok := st.tunnels[name]; ok {
				if ifr, ok := st.tunIfaces[name]; ok {
					have, _ := ifr.GetStringMap("options")
					if u, err := ifr.UUID(); err == nil && !maps.Equal(have, opts) {
						t.add(ovsdb.Update("Interface", []ovsdb.Condition{ovsdb.Eq("_uuid", u)},
							ovsdb.Row{"options": ovsdb.StringMap(opts)}))
					}
				}
				continue
			}
			ports = append(ports, t.port(name, d.marks(roleTunnel, extPeer, p.Name), nil,
				ovsdb.Row{"type": "vxlan", "options": ovsdb.StringMap(opts)}))
		}
		var drop ovsdb.Set
		for name, p := range st.tunnels {
			if _, ok := want[name]; !ok {
				drop = append(drop, p.uuid)
			}
		}
		if len(drop) > 0 {
			t.add(ovsdb.Mutate("Bridge", nil, ovsdb.Mut("ports", "delete", drop)))
		}
	}
	if st.tunBr == nil {
		t.bridge(d.cfg.TunnelBridge, d.cfg.DatapathType, d.marks(roleTunnelBr), d.marks(roleLocal), ovsdb.Row{"fail_mode": "secure"}, ports)
	} else if len(ports) > 0 {
		t.add(addPorts(st.tunBr.uuid, ports))
	}
}

// flowState is a flow table as written: its text, the tunnel bridge and the
// vswitchd process it was written to (either one new means the table is empty
// again), and when.
type flowState struct {
	text   string
	bridge ovsdb.UUID
	pid    string
	at     time.Time
}

// Tables of the tunnel bridge.
//
//	0: classify: from the patch port (local frames) to 2, from a tunnel to 1
//	1: from a tunnel: a VNI from a host that has that network -> local VLAN
//	2: to the tunnels: a remote MAC to the one VTEP holding it; anything else
//	   (broadcast, multicast, unknown unicast) to every host of the network
func tunnelFlows(recs map[string]netRecord, remotes map[string]core.NetRemotes, patch int64, tuns map[string]int64) string {
	var b strings.Builder
	line := func(format string, a ...any) {
		fmt.Fprintf(&b, "cookie="+flowCookie+","+format+"\n", a...)
	}
	for table := 0; table <= 2; table++ {
		line("table=%d,priority=0,actions=drop", table)
	}
	line("table=0,priority=5,in_port=%d,actions=resubmit(,2)", patch)
	for _, name := range slices.Sorted(maps.Keys(tuns)) {
		line("table=0,priority=10,in_port=%d,actions=resubmit(,1)", tuns[name])
	}
	for _, k := range slices.Sorted(maps.Keys(recs)) {
		r := recs[k]
		if r.Encap != core.EncapVXLAN {
			continue
		}
		var flood strings.Builder
		for _, h := range remotes[k].Hosts {
			if of, ok := tuns[tunnelName(h.VTEP)]; ok {
				line("table=1,priority=10,in_port=%d,tun_id=%d,actions=mod_vlan_vid:%d,output:%d", of, r.Tag, r.VLAN, patch)
				fmt.Fprintf(&flood, ",output:%d", of)
			}
		}
		eps := slices.Clone(remotes[k].Endpoints)
		slices.SortFunc(eps, func(a, b core.Remote) int { return strings.Compare(a.MAC, b.MAC) })
		for _, e := range eps {
			if of, ok := tuns[tunnelName(e.VTEP)]; ok {
				line("table=2,priority=20,dl_vlan=%d,dl_dst=%s,actions=strip_vlan,set_field:%d->tun_id,output:%d", r.VLAN, e.MAC, r.Tag, of)
			}
		}
		if flood.Len() > 0 {
			line("table=2,priority=10,dl_vlan=%d,actions=strip_vlan,set_field:%d->tun_id%s", r.VLAN, r.Tag, flood.String())
		}
	}
	return b.String()
}

// syncFlows makes the tunnel bridge's flows exactly the wanted set, with one
// ovs-ofctl --bundle replace-flows, which diffs against the switch and sends
// only changes, atomically, so unchanged flows (and traffic) are never
// disturbed. When the set is what was last written to the same bridge and
// vswitchd less than FlowRefresh ago, nothing runs at all.  Callers hold
// infraMu.
func (d *Driver) syncFlows(ctx context.Context, recs map[string]netRecord) error {
	if !d.remotesKnown {
		// A restarted driver keeps the flows programmed until it knows what
		// lies beyond this host (the agent's first SetRemotes, in the same
		// pass): rewriting them from nothing would cut every tunnel.
		return nil
	}
	patch, tuns, bridge, err := d.waitOfports(ctx)
	if err != nil {
		return err
	}
	want := flowState{text: tunnelFlows(recs, d.remotes, patch, tuns), bridge: bridge, pid: d.vswitchdPid()}
	last := d.applied
	if last.text == want.text && last.bridge == want.bridge && last.pid == want.pid && time.Since(last.at) < d.cfg.FlowRefresh {
		return nil
	}
	d.applied = flowState{}
	target := "unix:" + filepath.Join(d.cfg.RunDir, d.cfg.TunnelBridge+".mgmt")
	if err := d.ofctl(ctx, want.text, "--bundle", "replace-flows", target, "-"); err != nil {
		return fmt.Errorf("program flows on %s: %w", d.cfg.TunnelBridge, err)
	}
	want.at = time.Now()
	d.applied = want
	if last.text != want.text {
		d.log.WithFields(logrus.Fields{"flows": strings.Count(want.text, "\n"), "tunnels": len(tuns)}).Info("tunnel flows updated")
	}
	return nil
}

// waitOfports waits until vswitchd has attached the tunnel bridge's patch
// port and tunnel ports (flows name ports by OpenFlow number) and returns the
// numbers, the tunnels' by port name, and the tunnel bridge's row. An
// interface vswitchd could not open is an error at once.
func (d *Driver) waitOfports(ctx context.Context) (int64, map[string]int64, ovsdb.UUID, error) {
	tunMark := ovsdb.Map{extOwner: ownerValue, extRole: roleTunnel}
	for {
		res, err := d.tx(ctx, true,
			ovsdb.Select("Interface", []ovsdb.Condition{ovsdb.Eq("name", d.tunPatch())}, "name", "ofport", "error"),
			ovsdb.Select("Interface", []ovsdb.Condition{ovsdb.Includes("external_ids", tunMark)}, "name", "ofport", "error", "external_ids"),
			ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.TunnelBridge)}, "_uuid"))
		if err != nil {
			return 0, nil, "", fmt.Errorf("read tunnel ports: %w", err)
		}
		if len(res[0].Rows) == 0 || len(res[2].Rows) == 0 {
			return 0, nil, "", fmt.Errorf("patch port %s missing", d.tunPatch())
		}
		bridge, _ := res[2].Rows[0].UUID()
		rows := res[0].Rows
		for _, r := range res[1].Rows {
			if ext, _ := r.GetStringMap("external_ids"); d.ours(ext) {
				rows = append(rows, r)
			}
		}
		ready := true
		ofs := map[string]int64{}
		for _, r := range rows {
			name, _ := r.GetString("name")
			of, err := r.GetInt("ofport")
			if of < 0 {
				msg, _ := r.GetString("error")
				return 0, nil, "", fmt.Errorf("ovs-vswitchd cannot attach %s: %s", name, msg)
			}
			if err != nil || of == 0 {
				ready = false
				break
			}
			ofs[name] = of
		}
		if ready {
			patch := ofs[d.tunPatch()]
			delete(ofs, d.tunPatch())
			return patch, ofs, bridge, nil
		}
		select {
		case <-ctx.Done():
			return 0, nil, "", fmt.Errorf("wait for ovs-vswitchd to attach tunnel ports: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ofctl runs ovs-ofctl with stdin, bounded by ctx and its own timeout flag.
func (d *Driver) ofctl(ctx context.Context, stdin string, args ...string) error {
	secs := int(d.cfg.Timeout / time.Second)
	if secs < 1 {
		secs = 1
	}
	cmd := exec.CommandContext(ctx, d.cfg.Ofctl, append([]string{"--timeout=" + strconv.Itoa(secs)}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ovs-ofctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
