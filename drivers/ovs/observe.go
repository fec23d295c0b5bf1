package ovs

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/drivers/ovs/ovsdb"
	"github.com/netplugin/netplugin/internal/nl"
)

// Observe reports the networks recorded on the integration bridge and every
// endpoint that has a port or a veth marked as ours, in one OVSDB transaction
// and one link dump. An endpoint is healthy when its port is on the bridge
// with its network's VLAN, vswitchd has given it an ofport, and its veth
// exists, is up and was built from the same spec.
func (d *Driver) Observe(ctx context.Context) (core.Actual, error) {
	ctx, cancel := d.opCtx(ctx)
	defer cancel()
	if err := d.ready(ctx); err != nil {
		return core.Actual{}, err
	}
	epMark := ovsdb.Map{extOwner: ownerValue, extRole: roleEndpoint}
	res, err := d.tx(ctx, true,
		ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Bridge)}, bridgeCols()...),
		ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Includes("external_ids", epMark)}, "_uuid", "name", "external_ids", "tag"),
		ovsdb.Select("Interface", []ovsdb.Condition{ovsdb.Includes("external_ids", epMark)}, "name", "ofport"),
		ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.Uplink)}, portCols()...),
		ovsdb.Select("Port", []ovsdb.Condition{ovsdb.Eq("name", d.intPatch())}, portCols()...),
		ovsdb.Select("Bridge", []ovsdb.Condition{ovsdb.Eq("name", d.cfg.TunnelBridge)}, "_uuid"),
	)
	if err != nil {
		return core.Actual{}, fmt.Errorf("observe: %w", err)
	}
	links, err := nl.LinkList(d.host)
	if err != nil {
		return core.Actual{}, fmt.Errorf("observe: list links: %w", err)
	}
	byName := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}

	a := core.Actual{Networks: map[string]core.ObservedNetwork{}, Endpoints: map[string]core.ObservedEndpoint{}}
	br, err := firstBridge(res[0].Rows)
	if err != nil {
		return core.Actual{}, fmt.Errorf("observe: %w", err)
	}
	recs := map[string]netRecord{}
	onBridge := map[ovsdb.UUID]bool{}
	if br != nil && d.ours(br.ext) {
		recs = records(br.ext)
		for _, u := range br.ports {
			onBridge[u] = true
		}
	}
	// Infrastructure drift (uplink or patch port deleted or changed by hand)
	// is reported as a fingerprint mismatch on every network, so that the
	// agent's next pass re-ensures them and converge repairs it.
	drift := false
	if d.cfg.Uplink != "" {
		p := firstPort(res[3].Rows)
		drift = p == nil || !slices.Equal(p.trunks, trunks(recs, core.EncapVLAN))
	}
	if d.tunnels() {
		p := firstPort(res[4].Rows)
		drift = drift || p == nil || len(res[5].Rows) == 0 || !slices.Equal(p.trunks, trunks(recs, core.EncapVXLAN))
	}
	for k, r := range recs {
		fp := r.FP
		if drift {
			fp = ""
		}
		a.Networks[k] = core.ObservedNetwork{Key: k, Fingerprint: fp}
	}

	ofports := map[string]int64{}
	for _, r := range res[2].Rows {
		name, _ := r.GetString("name")
		ofports[name], _ = r.GetInt("ofport")
	}
	var foreign []string
	foreignPort := map[string]bool{}
	for _, r := range res[1].Rows {
		p := toPort(r)
		if p == nil || p.ext[extEndpoint] == "" {
			continue
		}
		if h, other := d.otherHost(p.ext); other {
			foreign = append(foreign, p.name+"@"+h)
			foreignPort[p.name] = true
			continue
		}
		key := p.ext[extEndpoint]
		o := core.ObservedEndpoint{Key: key, Fingerprint: p.ext[extFP], IfName: p.name}
		tag, _ := r.GetInt("tag")
		rec, haveNet := recs[p.ext[extNet]]
		// ofport 0: committed, vswitchd has not attached it yet — in progress,
		// not broken, so it is not "repaired" while a bulk attach settles;
		// -1: vswitchd failed to attach it.
		healthy := onBridge[p.uuid] && ofports[p.name] >= 0 && haveNet && tag == int64(rec.VLAN)
		if l, ok := byName[p.name]; ok {
			o.IfIndex = l.Attrs().Index
			f, mine := nl.ParseAlias(l.Attrs().Alias, kindEP, 2)
			healthy = healthy && mine && f[0] == o.Fingerprint && l.Attrs().Flags&net.FlagUp != 0
		} else {
			healthy = false
		}
		o.Healthy = healthy
		a.Endpoints[key] = o
	}
	d.reportForeign(foreign)
	// A veth of ours whose port is gone (deleted by hand, or a crash between
	// link and port) is an unhealthy endpoint: Ensure puts the port back.
	for _, l := range links {
		f, ok := nl.ParseAlias(l.Attrs().Alias, kindEP, 2)
		if !ok || foreignPort[l.Attrs().Name] { // the veth of another label's port is that agent's
			continue
		}
		if _, seen := a.Endpoints[f[1]]; !seen {
			a.Endpoints[f[1]] = core.ObservedEndpoint{Key: f[1], Fingerprint: f[0], IfName: l.Attrs().Name, IfIndex: l.Attrs().Index}
		}
	}
	return a, nil
}

// reportForeign logs, when the set changes, the endpoint ports another host
// label's agent made on this OVS: after a change of --host-label they are
// left alone, not swept away, and the operator is told.
func (d *Driver) reportForeign(ports []string) {
	slices.Sort(ports)
	key := strings.Join(ports, ",")
	d.foreignMu.Lock()
	defer d.foreignMu.Unlock()
	if key == d.foreign {
		return
	}
	d.foreign = key
	if len(ports) > 0 {
		d.log.WithField("ports", key).Warn("OVS ports of another netplugin host label found; leaving them alone " +
			"(delete them, or run their agent with its own --host-label)")
	}
}
