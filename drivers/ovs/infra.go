package ovs

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
)

// netRecord is one network as recorded on the integration bridge.
type netRecord struct {
	FP    string
	Encap string
	Tag   int // VLAN or VNI
	VLAN  int // local VLAN on the integration bridge (= Tag for VLAN networks)
}

func (r netRecord) String() string { return fmt.Sprintf("%s:%s:%d:%d", r.FP, r.Encap, r.Tag, r.VLAN) }

func parseRecord(v string) (netRecord, bool) {
	f := strings.Split(v, ":")
	if len(f) != 4 {
		return netRecord{}, false
	}
	tag, err1 := strconv.Atoi(f[2])
	vlan, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil || vlan < 1 || vlan > 4094 {
		return netRecord{}, false
	}
	return netRecord{FP: f[0], Encap: f[1], Tag: tag, VLAN: vlan}, true
}

// records extracts the network records from a bridge's external_ids.
func records(ext map[string]string) map[string]netRecord {
	out := map[string]netRecord{}
	for k, v := range ext {
		if key, ok := strings.CutPrefix(k, extNetPrefix); ok {
			if r, ok := parseRecord(v); ok {
				out[key] = r
			}
		}
	}
	return out
}

// trunks lists the local VLANs of the networks of one encap, for the uplink
// (VLAN networks) and the patch port to the tunnel bridge (VXLAN networks). An
// empty trunks column means "all VLANs" to OVS, so with nothing to carry we
// trunk only VLAN 4095, which is reserved and never appears on the wire.
func trunks(recs map[string]netRecord, encap string) []int64 {
	var out []int64
	for _, r := range recs {
		if r.Encap == encap && !slices.Contains(out, int64(r.VLAN)) {
			out = append(out, int64(r.VLAN))
		}
	}
	if len(out) == 0 {
		return []int64{4095}
	}
	slices.Sort(out)
	return out
}

// allocLocalVLAN picks the highest VLAN no other network uses. VXLAN networks
// take VLANs from the top so that they rarely meet the (usually low) tags of
// VLAN networks; the choice is recorded, so a restart keeps it.
func allocLocalVLAN(recs map[string]netRecord, self string) (int, error) {
	used := map[int]bool{}
	for k, r := range recs {
		if k != self {
			used[r.VLAN] = true
		}
	}
	for v := 4094; v >= 1; v-- {
		if !used[v] {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: no free local VLAN on the bridge", core.ErrInUse)
}

// bridgeRow and portRow are the parts of rows the infrastructure code reads.
type bridgeRow struct {
	uuid   ovsdb.UUID
	ext    map[string]string
	ports  []ovsdb.UUID
	dpType string
}

type portRow struct {
	uuid   ovsdb.UUID
	name   string
	ext    map[string]string
	trunks []int64
}

// infraState is what converge reads in one transaction.
type infraState struct {
	intBr, tunBr       *bridgeRow
	uplink             *portRow
	uplinkIfaceForeign bool // an interface of that name sits in a port not ours
	intPatch, tunPatch *portRow
	tunnels            map[string]*portRow  // our tunnel ports by name
	tunIfaces          map[string]ovsdb.Row // their interfaces by name
	recs               map[string]netRecord // from intBr
}

// Columns read by firstBridge and toPort; functions, not variables, so that
// no caller can change a shared slice.
func bridgeCols() []string {
	return []string{"_uuid", "name", "external_ids", "ports", "datapath_type"}
}
func portCols() []string { return []string{"_uuid", "name", "external_ids", "trunks"} }

func (d *Driver) readInfra(ctx context.Context) (*infraState, error) {
	tunMark := ovsdb.Map{extOwner: ownerValue, extRole: roleTunnel}
	res, err := d.tx(ctx, true,
		ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Bridge)}, bridgeCols()...),
		ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.TunnelBridge)}, bridgeCols()...),
		ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Uplink)}, portCols()...),
		ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Eq("name", d.intPatch())}, portCols()...),
		ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Eq("name", d.tunPatch())}, portCols()...),
		ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Includes("external_ids", tunMark)}, portCols()...),
		ovsdb.Select("Interface", []ovsdb.Condition{ovsdb.Includes("external_ids", tunMark)}, "_uuid", "name", "options", "ofport"),
		ovsdb.Select("Interface", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Uplink)}, "_uuid", "external_ids"),
	)
	if err != nil {
		return nil, fmt.Errorf("read bridges: %w", err)
	}
	st := &infraState{tunnels: map[string]*portRow{}, tunIfaces: map[string]ovsdb.Row{}, recs: map[string]netRecord{}}
	if st.intBr, err = firstBridge(res[0].Rows); err != nil {
		return nil, err
	}
	if st.tunBr, err = firstBridge(res[1].Rows); err != nil {
		return nil, err
	}
	if st.intBr != nil && d.ours(st.intBr.ext) {
		st.recs = records(st.intBr.ext)
	}
	if d.cfg.Uplink != "" {
		st.uplink = firstPort(res[2].Rows)
		for _, r := range res[7].Rows {
			ext, _ := r.GetStringMap("external_ids")
			st.uplinkIfaceForeign = st.uplinkIfaceForeign || !d.ours(ext)
		}
	}
	st.intPatch, st.tunPatch = firstPort(res[3].Rows), firstPort(res[4].Rows)
	for _, r := range res[5].Rows {
		if p := toPort(r); p != nil && d.ours(p.ext) {
			st.tunnels[p.name] = p
		}
	}
	for _, r := range res[6].Rows {
		if name, err := r.GetString("name"); err == nil && st.tunnels[name] != nil {
			st.tunIfaces[name] = r
		}
	}
	return st, nil
}

func firstBridge(rows []ovsdb.Row) (*bridgeRow, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	r := rows[0]
	u, err := r.UUID()
	if err != nil {
		return nil, fmt.Errorf("bridge row: %w", err)
	}
	ext, _ := r.GetStringMap("external_ids")
	ports, _ := r.GetUUIDs("ports")
	dp, _ := r.GetString("datapath_type")
	return &bridgeRow{uuid: u, ext: ext, ports: ports, dpType: dp}, nil
}

func firstPort(rows []ovsdb.Row) *portRow {
	if len(rows) == 0 {
		return nil
	}
	return toPort(rows[0])
}

func toPort(r ovsdb.Row) *portRow {
	u, err := r.UUID()
	if err != nil {
		return nil
	}
	name, _ := r.GetString("name")
	ext, _ := r.GetStringMap("external_ids")
	return &portRow{uuid: u, name: name, ext: ext, trunks: intSet(r, "trunks")}
}

// intSet reads an integer set column, which the server sends as a bare atom
// when it has exactly one element.
func intSet(r ovsdb.Row, col string) []int64 {
	var out []int64
	switch v := r[col].(type) {
	case ovsdb.Set:
		for _, e := range v {
			if i, ok := e.(int64); ok {
				out = append(out, i)
			}
		}
	case int64:
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// checkOwnership refuses to go on when a row we would change belongs to
// someone else. It runs before any write, so a refusal changes nothing.
func (d *Driver) checkOwnership(st *infraState) error {
	if st.intBr != nil && !d.ours(st.intBr.ext) {
		return d.notOurs("bridge "+d.cfg.Bridge, st.intBr.ext)
	}
	if d.tunnels() && st.tunBr != nil && !d.ours(st.tunBr.ext) {
		return d.notOurs("bridge "+d.cfg.TunnelBridge, st.tunBr.ext)
	}
	if d.cfg.Uplink != "" && ((st.uplink != nil && !d.ours(st.uplink.ext)) || st.uplinkIfaceForeign) {
		return fmt.Errorf("%w: uplink %s is already used by OVS outside netplugin; not taking it over", core.ErrInUse, d.cfg.Uplink)
	}
	for _, p := range []*portRow{st.intPatch, st.tunPatch} {
		if p != nil && !d.ours(p.ext) {
			return d.notOurs("port "+p.name, p.ext)
		}
	}
	return nil
}

// notOurs is the refusal to touch a row that is not ours, naming the other
// agent's host label when another netplugin agent marked it.
func (d *Driver) notOurs(what string, ext map[string]string) error {
	if h, ok := d.otherHost(ext); ok {
		return fmt.Errorf("%w: %s belongs to the netplugin agent of host %q, not %q; not touching it "+
			"(remove it, or run that agent with --host-label %s)", core.ErrInUse, what, h, d.cfg.Host, h)
	}
	return fmt.Errorf("%w: %s exists but is not netplugin's (no %s=%s in external_ids); not touching it",
		core.ErrInUse, what, extOwner, ownerValue)
}

// txn builds one transaction, handing out uuid-names for inserted rows.
type txn struct {
	ops []ovsdb.Operation
	n   int
}

func (t *txn) add(ops ...ovsdb.Operation) { t.ops = append(t.ops, ops...) }

// port inserts a port with one interface of the same name and returns the
// port's named uuid. row holds the port columns, iface the interface columns.
func (t *txn) port(name string, ext map[string]string, row, iface ovsdb.Row) ovsdb.NamedUUID {
	t.n++
	in, pn := fmt.Sprintf("iface%d", t.n), fmt.Sprintf("port%d", t.n)
	irow := ovsdb.Row{"name": name, "external_ids": ovsdb.StringMap(ext)}
	maps.Copy(irow, iface)
	prow := ovsdb.Row{"name": name, "interfaces": ovsdb.Set{ovsdb.NamedUUID(in)}, "external_ids": ovsdb.StringMap(ext)}
	maps.Copy(prow, row)
	t.add(ovsdb.Insert("Interface", in, irow), ovsdb.Insert("Port", pn, prow))
	return ovsdb.NamedUUID(pn)
}

// bridge inserts a bridge holding ports and its own internal port (marked
// localExt), and hangs it off the root row (bridges are not root rows:
// unreferenced, they vanish).
func (t *txn) bridge(name, dpType string, ext, localExt map[string]string, extra ovsdb.Row, ports []ovsdb.NamedUUID) {
	local := t.port(name, localExt, nil, ovsdb.Row{"type": "internal"})
	set := ovsdb.Set{local}
	for _, p := range ports {
		set = append(set, p)
	}
	t.n++
	bn := fmt.Sprintf("bridge%d", t.n)
	row := ovsdb.Row{"name": name, "datapath_type": dpType, "ports": set, "external_ids": ovsdb.StringMap(ext)}
	maps.Copy(row, extra)
	t.add(ovsdb.Insert("Bridge", bn, row),
		ovsdb.Mutate("Open_vSwitch", nil, ovsdb.Mut("bridges", "insert", ovsdb.Set{ovsdb.NamedUUID(bn)})))
}

func addPorts(bridge ovsdb.UUID, ports []ovsdb.NamedUUID) ovsdb.Operation {
	return ovsdb.Mutate("Bridge", []ovsdb.Condition{ovsdb.Eq("_uuid", bridge)},
		ovsdb.Mut("ports", "insert", ovsdb.SetOf(ports)))
}

func setTrunks(p *portRow, want []int64) []ovsdb.Operation {
	if slices.Equal(p.trunks, want) {
		return nil
	}
	return []ovsdb.Operation{ovsdb.Update("Port", []ovsdb.Condition{ovsdb.Eq("_uuid", p.uuid)},
		ovsdb.Row{"trunks": ovsdb.SetOf(want)})}
}

// converge makes bridges, uplink, patch and tunnel ports match the network
// records after change (which may edit them) and the known remotes, in one
// transaction, then brings the tunnel flows up to date (which costs nothing
// when they are). Callers hold infraMu.
func (d *Driver) converge(ctx context.Context, change func(map[string]netRecord) error) error {
	st, err := d.readInfra(ctx)
	if err != nil {
		return err
	}
	recs := maps.Clone(st.recs)
	if change != nil {
		if err := change(recs); err != nil {
			return err
		}
	}
	if len(recs) == 0 {
		// Nothing is wanted: remove what is ours, and there is nothing to
		// check on rows that are not (they are left alone).
		d.setNets(recs)
		return d.teardown(ctx, st)
	}
	if err := d.checkOwnership(st); err != nil {
		return err
	}
	if d.cfg.Uplink != "" {
		// Checked here rather than left to vswitchd so that a typo is a clear
		// error now, not a port with an error column later.
		if _, err := d.host.LinkByName(d.cfg.Uplink); err != nil {
			return fmt.Errorf("%w: uplink %s: %v", core.ErrNotFound, d.cfg.Uplink, err)
		}
	}
	var t txn
	var intPorts []ovsdb.NamedUUID
	if d.cfg.Uplink != "" {
		want := trunks(recs, core.EncapVLAN)
		if st.uplink == nil {
			intPorts = append(intPorts, t.port(d.cfg.Uplink, d.marks(roleUplink), ovsdb.Row{"trunks": ovsdb.SetOf(want)}, nil))
		} else {
			t.add(setTrunks(st.uplink, want)...)
		}
	}
	if d.tunnels() {
		want := trunks(recs, core.EncapVXLAN)
		if st.intPatch == nil {
			intPorts = append(intPorts, t.port(d.intPatch(), d.marks(rolePatch), ovsdb.Row{"trunks": ovsdb.SetOf(want)},
				ovsdb.Row{"type": "patch", "options": ovsdb.StringMap(map[string]string{"peer": d.tunPatch()})}))
		} else {
			t.add(setTrunks(st.intPatch, want)...)
		}
		d.tunnelOps(&t, st, recs)
	}
	if st.intBr == nil {
		ext := d.marks(roleIntegration)
		for k, r := range recs {
			ext[extNetPrefix+k] = r.String()
		}
		t.bridge(d.cfg.Bridge, d.cfg.DatapathType, ext, d.marks(roleLocal), nil, intPorts)
	} else {
		if st.intBr.dpType != d.cfg.DatapathType {
			d.log.WithFields(logrus.Fields{"have": st.intBr.dpType, "want": d.cfg.DatapathType}).
				Warn("bridge has another datapath type; leaving it, changing it would cut traffic")
		}
		t.add(recordOps(st.intBr, st.recs, recs)...)
		if len(intPorts) > 0 {
			t.add(addPorts(st.intBr.uuid, intPorts))
		}
	}
	changed := len(t.ops) > 0
	if changed {
		t.add(ovsdb.Comment("netplugin: converge bridges"))
		if _, err := d.tx(ctx, false, t.ops...); err != nil {
			return fmt.Errorf("program bridges: %w", err)
		}
		d.log.WithFields(logrus.Fields{"networks": len(recs), "tunnels": len(d.wantTunnels(recs)), "created": st.intBr == nil}).
			Info("bridges, uplink and tunnels updated")
	}
	d.setNets(recs)
	if d.tunnels() {
		return d.syncFlows(ctx, recs)
	}
	return nil
}

// recordOps rewrites the network records that differ, leaving the bridge's
// other external_ids alone.
func recordOps(br *bridgeRow, have, want map[string]netRecord) []ovsdb.Operation {
	var del ovsdb.Set
	ins := ovsdb.Map{}
	for k, r := range have {
		if w, ok := want[k]; !ok || w != r {
			del = append(del, extNetPrefix+k)
		}
	}
	for k, w := range want {
		if r, ok := have[k]; !ok || r != w {
			ins[extNetPrefix+k] = w.String()
		}
	}
	where := []ovsdb.Condition{ovsdb.Eq("_uuid", br.uuid)}
	var ops []ovsdb.Operation
	if len(del) > 0 {
		ops = append(ops, ovsdb.Mutate("Bridge", where, ovsdb.Mut("external_ids", "delete", del)))
	}
	if len(ins) > 0 {
		ops = append(ops, ovsdb.Mutate("Bridge", where, ovsdb.Mut("external_ids", "insert", ins)))
	}
	return ops
}

// teardown removes our bridges once no network is left, unless the
// integration bridge still holds ports that are not infrastructure (endpoints,
// or someone else's): then it only clears the records.
func (d *Driver) teardown(ctx context.Context, st *infraState) error {
	if st.intBr == nil || !d.ours(st.intBr.ext) {
		return nil
	}
	busy, err := d.hasOtherPorts(ctx, st.intBr)
	if err != nil {
		return err
	}
	var ops []ovsdb.Operation
	if busy {
		ops = recordOps(st.intBr, st.recs, nil)
	} else {
		del := ovsdb.Set{st.intBr.uuid}
		if st.tunBr != nil && d.ours(st.tunBr.ext) {
			del = append(del, st.tunBr.uuid)
		}
		// Dropping the references is enough: OVSDB garbage-collects the
		// bridges with their ports and interfaces, and vswitchd their flows.
		// Our QoS row is a root row: it goes explicitly (see qos.go).
		ops = []ovsdb.Operation{ovsdb.Mutate("Open_vSwitch", nil, ovsdb.Mut("bridges", "delete", del)),
			ovsdb.Delete("QoS", ovsdb.Includes("external_ids", ovsdb.StringMap(d.marks(roleQoS))))}
		d.forgetQoS()
	}
	if len(ops) == 0 {
		return nil
	}
	if _, err := d.tx(ctx, false, append(ops, ovsdb.Comment("netplugin: last network removed"))...); err != nil {
		return fmt.Errorf("remove bridges: %w", err)
	}
	if !busy {
		d.applied = flowState{} // the flows went with the tunnel bridge
		d.log.Info("last network removed; bridges deleted")
	}
	return nil
}

// hasOtherPorts reports whether br holds any port that is not one of our
// infrastructure ports.
func (d *Driver) hasOtherPorts(ctx context.Context, br *bridgeRow) (bool, error) {
	if len(br.ports) == 0 {
		return false, nil
	}
	ops := make([]ovsdb.Operation, 0, len(br.ports))
	for _, u := range br.ports {
		ops = append(ops, ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Eq("_uuid", u)}, "external_ids"))
	}
	res, err := d.tx(ctx, true, ops...)
	if err != nil {
		return false, fmt.Errorf("read ports of %s: %w", d.cfg.Bridge, err)
	}
	for _, r := range res {
		for _, row := range r.Rows {
			ext, _ := row.GetStringMap("external_ids")
			switch {
			case !d.ours(ext), ext[extRole] == roleEndpoint:
				return true, nil
			}
		}
	}
	return false, nil
}

func (d *Driver) setNets(recs map[string]netRecord) {
	d.netsMu.Lock()
	d.nets = maps.Clone(recs)
	d.netsMu.Unlock()
}

// localVLAN returns the VLAN an endpoint of n is tagged with. The network must
// have been ensured; the cache is refreshed from the bridge on a miss, so a
// restarted driver needs no EnsureNetwork first.
func (d *Driver) localVLAN(ctx context.Context, n core.NetworkSpec) (int, error) {
	d.netsMu.Lock()
	r, ok := d.nets[n.Key()]
	d.netsMu.Unlock()
	if !ok || r.Encap != n.Encap || r.Tag != n.Tag {
		res, err := d.tx(ctx, true, ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Bridge)}, "external_ids"))
		if err != nil {
			return 0, fmt.Errorf("read bridge %s: %w", d.cfg.Bridge, err)
		}
		if len(res[0].Rows) == 0 {
			return 0, fmt.Errorf("%w: bridge %s does not exist: network %s is not ensured", core.ErrNotFound, d.cfg.Bridge, n.Key())
		}
		ext, _ := res[0].Rows[0].GetStringMap("external_ids")
		recs := records(ext)
		d.setNets(recs)
		if r, ok = recs[n.Key()]; !ok {
			return 0, fmt.Errorf("%w: network %s is not ensured on bridge %s", core.ErrNotFound, n.Key(), d.cfg.Bridge)
		}
	}
	if r.Encap != n.Encap || r.Tag != n.Tag {
		return 0, fmt.Errorf("network %s is programmed as %s %d, not %s %d: ensure the network first",
			n.Key(), r.Encap, r.Tag, n.Encap, n.Tag)
	}
	return r.VLAN, nil
}
