package state

import (
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/netplugin/netplugin/core"
)

// storeProblems checks what the index helpers promise of a store (all its
// keys and values): every index copy is exactly what its record says, none
// is missing or left over, and a block the allocator's hint calls full has
// no free address.
func storeProblems(kvs map[string]string) []string {
	var out []string
	want := map[string]string{}
	nets := map[string]core.Network{}
	for k, v := range kvs {
		switch {
		case strings.HasPrefix(k, endpointPrefix):
			var e core.Endpoint
			if json.Unmarshal([]byte(v), &e) != nil {
				continue
			}
			want[netEndpointKey(e.Tenant, e.Network, e.Name)] = v
			if e.Host != "" {
				want[hostEndpointKey(e.Host, e.Tenant, e.Name)] = v
			}
			if e.Group != "" {
				want[groupMemberKey(e.Tenant, e.Group, e.Name)] = v
			}
		case strings.HasPrefix(k, policyPrefix):
			var p core.Policy
			if json.Unmarshal([]byte(v), &p) == nil {
				for _, r := range policyRefs(p) {
					want[usesKey(p.Tenant, r, kindPolicy, p.Name)] = ""
				}
			}
		case strings.HasPrefix(k, groupPrefix):
			var g core.Group
			if json.Unmarshal([]byte(v), &g) == nil {
				for _, r := range groupRefs(g) {
					want[usesKey(g.Tenant, r, kindGroup, g.Name)] = ""
				}
			}
		case strings.HasPrefix(k, ipAllocPrefix):
			if h, ok := reservationHost(v); ok {
				parts := strings.Split(strings.TrimPrefix(k, ipAllocPrefix), "/")
				if len(parts) == 3 {
					want[hostReservationKey(h, parts[0], parts[1], parts[2])] = v
				}
			}
		case strings.HasPrefix(k, networkPrefix):
			var n core.Network
			if json.Unmarshal([]byte(v), &n) == nil {
				nets[n.Key()] = n
			}
		}
	}
	for k, v := range kvs {
		if !strings.HasPrefix(k, indexPrefix) {
			continue
		}
		w, ok := want[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("index key %s indexes nothing", k))
		case w != v:
			out = append(out, fmt.Sprintf("index key %s is %s, its record %s", k, v, w))
		}
		delete(want, k)
	}
	for k := range want {
		out = append(out, fmt.Sprintf("index key %s is missing", k))
	}
	for k, v := range kvs {
		nk, ok := strings.CutPrefix(k, ipFullPrefix)
		if !ok {
			continue
		}
		n, ok := nets[nk]
		if !ok {
			out = append(out, fmt.Sprintf("hint %s of a missing network", k))
			continue
		}
		h := decodeHint([]byte(v), 1, mustCIDR(n.Subnet))
		first, last := core.SubnetBounds(mustCIDR(n.Subnet))
		reserved := reservedIn(first, last, gatewayOf(n))
		for b := blockOf(first); b <= blockOf(last); b += 1 << blockBits {
			if !h.isFull(b) {
				continue
			}
			for off := uint32(0); off < 1<<blockBits; off++ {
				a := b + off
				if a < first || a > last || reserved(a) {
					continue
				}
				if _, taken := kvs[ipKey(n.Tenant, n.Name, core.IPFromUint(a).String())]; !taken {
					out = append(out, fmt.Sprintf("hint of %s calls block %s full, but %s is free", nk, net.IP(core.IPFromUint(b)), net.IP(core.IPFromUint(a))))
					break
				}
			}
			if b == blockOf(last) {
				break
			}
		}
	}
	sort.Strings(out)
	return out
}
