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

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
)

// flowCookie marks every flow we program ("np"), so a dump tells ours apart.
const flowCookie = "0x6e70"

// wantTunnels maps tunnel port name to peer, or is nil while the peers are not
// known yet (then existing tunnel ports are kept as they are).
func (d *Driver) wantTunnels() map[string]core.Peer {
	if !d.peersKnown {
		return nil
	}
	want := map[string]core.Peer{}
	for _, p := range d.peers {
		if _, dup := want[tunnelName(p.VTEP)]; !dup {
			want[tunnelName(p.VTEP)] = p
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
// of flooding between tunnels), its patch port, and one VXLAN port per peer.
func (d *Driver) tunnelOps(t *txn, st *infraState) {
	var ports []ovsdb.NamedUUID
	if st.tunPatch == nil {
		ports = append(ports, t.port(d.tunPatch(), marks(rolePatch), nil,
			ovsdb.Row{"type": "patch", "options": ovsdb.StringMap(map[string]string{"peer": d.intPatch()})}))
	}
	if want := d.wantTunnels(); want != nil {
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
			ports = append(ports, t.port(name, marks(roleTunnel, extPeer, p.Name), nil,
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
		t.bridge(d.cfg.TunnelBridge, d.cfg.DatapathType, marks(roleTunnelBr), ovsdb.Row{"fail_mode": "secure"}, ports)
	} else if len(ports) > 0 {
		t.add(addPorts(st.tunBr.uuid, ports))
	}
}

// syncFlows replaces the tunnel bridge's flows with exactly the wanted set.
// ovs-ofctl replace-flows diffs against the switch and sends only changes, in
// one atomic bundle, so unchanged flows (and traffic) are never disturbed.
func (d *Driver) syncFlows(ctx context.Context, recs map[string]netRecord) error {
	patch, tuns, err := d.waitOfports(ctx)
	if err != nil {
		return err
	}
	var b strings.Builder
	line := func(format string, a ...any) {
		fmt.Fprintf(&b, "cookie="+flowCookie+","+format+"\n", a...)
	}
	line("table=0,priority=0,actions=drop")
	line("table=1,priority=0,actions=drop")
	for _, of := range tuns {
		line("table=0,priority=10,in_port=%d,actions=resubmit(,1)", of)
	}
	var out strings.Builder
	for _, of := range tuns {
		fmt.Fprintf(&out, ",output:%d", of)
	}
	for _, k := range slices.Sorted(maps.Keys(recs)) {
		r := recs[k]
		if r.Encap != core.EncapVXLAN {
			continue
		}
		if len(tuns) > 0 {
			// Local VLAN -> VNI: untag, set the key, flood to every peer (the
			// remote integration bridge learns and filters by MAC).
			line("table=0,priority=20,in_port=%d,dl_vlan=%d,actions=strip_vlan,set_field:%d->tun_id%s", patch, r.VLAN, r.Tag, out.String())
		}
		// VNI -> local VLAN, back to the integration bridge's NORMAL switching.
		line("table=1,priority=10,tun_id=%d,actions=mod_vlan_vid:%d,output:%d", r.Tag, r.VLAN, patch)
	}
	target := "unix:" + filepath.Join(d.cfg.RunDir, d.cfg.TunnelBridge+".mgmt")
	if err := d.ofctl(ctx, b.String(), "--bundle", "replace-flows", target, "-"); err != nil {
		return fmt.Errorf("program flows on %s: %w", d.cfg.TunnelBridge, err)
	}
	return nil
}

// waitOfports waits until vswitchd has attached the tunnel bridge's patch
// port and tunnel ports (flows name ports by OpenFlow number) and returns the
// numbers. An interface vswitchd could not open is an error at once.
func (d *Driver) waitOfports(ctx context.Context) (int64, []int64, error) {
	tunMark := ovsdb.Map{extOwner: ownerValue, extRole: roleTunnel}
	for {
		res, err := d.tx(ctx, true,
			ovsdb.Select("Interface", []ovsdb.Condition{ovsdb.Eq("name", d.tunPatch())}, "name", "ofport", "error"),
			ovsdb.Select("Interface", []ovsdb.Condition{ovsdb.Includes("external_ids", tunMark)}, "name", "ofport", "error"))
		if err != nil {
			return 0, nil, fmt.Errorf("read tunnel ports: %w", err)
		}
		rows := append(res[0].Rows, res[1].Rows...)
		if len(res[0].Rows) == 0 {
			return 0, nil, fmt.Errorf("patch port %s missing", d.tunPatch())
		}
		ready := true
		var ofs []int64
		for _, r := range rows {
			of, err := r.GetInt("ofport")
			if of < 0 {
				name, _ := r.GetString("name")
				msg, _ := r.GetString("error")
				return 0, nil, fmt.Errorf("ovs-vswitchd cannot attach %s: %s", name, msg)
			}
			if err != nil || of == 0 {
				ready = false
				break
			}
			ofs = append(ofs, of)
		}
		if ready {
			tuns := slices.Clone(ofs[1:])
			slices.Sort(tuns)
			return ofs[0], tuns, nil
		}
		select {
		case <-ctx.Done():
			return 0, nil, fmt.Errorf("wait for ovs-vswitchd to attach tunnel ports: %w", ctx.Err())
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
