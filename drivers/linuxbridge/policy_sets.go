package linuxbridge

// From a group's rules (highest priority first, first match wins) to the
// elements of one nftables set: the disjoint boxes (peer address range x
// protocol range x port range) of everything the rules allow. A packet of a
// new connection then costs one set lookup per direction, whatever the
// number of rules. nftables refuses overlapping elements in a concatenated
// interval set, so the boxes are made disjoint here: each rule's boxes minus
// what higher-priority rules already decided.

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/netplugin/netplugin/core"
)

// span is an inclusive range of one dimension.
type span struct{ lo, hi uint32 }

// box is a region of (peer IPv4 address, IP protocol, destination port).
type box [3]span

var anyBox = box{{0, 1<<32 - 1}, {0, 255}, {0, 65535}}

func (a box) overlaps(b box) bool {
	for i := range a {
		if a[i].hi < b[i].lo || b[i].hi < a[i].lo {
			return false
		}
	}
	return true
}

// minus returns a \ b as disjoint boxes (a itself if they do not meet).
func (a box) minus(b box) []box {
	if !a.overlaps(b) {
		return []box{a}
	}
	var out []box
	rest := a
	for i := range rest {
		if rest[i].lo < b[i].lo {
			p := rest
			p[i].hi = b[i].lo - 1
			out = append(out, p)
			rest[i].lo = b[i].lo
		}
		if rest[i].hi > b[i].hi {
			p := rest
			p[i].lo = b[i].hi + 1
			out = append(out, p)
			rest[i].hi = b[i].hi
		}
	}
	return out // rest, now inside b, is dropped
}

// ruleBoxes are the boxes a rule matches; members are the sorted addresses
// of each peer group.
func ruleBoxes(r core.CompiledRule, members map[string][]uint32) []box {
	base := anyBox
	if r.Proto != 0 {
		base[1] = span{uint32(r.Proto), uint32(r.Proto)}
	}
	if !r.Ports.Any() {
		base[2] = span{uint32(r.Ports.Lo), uint32(r.Ports.Hi)}
	}
	var ips []span
	switch {
	case r.PeerGroup != "":
		for _, ip := range members[r.PeerGroup] { // consecutive addresses become one range
			if n := len(ips); n > 0 && ips[n-1].hi+1 == ip {
				ips[n-1].hi = ip
			} else {
				ips = append(ips, span{ip, ip})
			}
		}
	case len(r.PeerNets) > 0:
		for _, c := range r.PeerNets {
			if _, sn, err := net.ParseCIDR(c); err == nil && sn.IP.To4() != nil {
				first, last := core.SubnetBounds(sn)
				ips = append(ips, span{first, last})
			}
		}
	default:
		ips = []span{anyBox[0]}
	}
	out := make([]box, 0, len(ips))
	for _, s := range ips {
		b := base
		b[0] = s
		out = append(out, b)
	}
	return out
}

// decided indexes disjoint boxes by address so that a box is compared only
// with the boxes near it: boxes of up to a /24 of addresses are filed under
// each /24 they touch, boxes of up to a /16 under each /16, wider ones are
// always compared.
type decided struct {
	boxes []box
	allow []bool
	wide  []int
	lvl   [2]map[uint32][]int // by /24, by /16
}

// levels of the index: the shift of the address bits that name a bucket,
// and the widest span filed there.
var levels = [2]struct{ shift, span uint32 }{{8, 1 << 8}, {16, 1 << 16}}

func levelOf(b box) int {
	for i, l := range levels {
		if b[0].hi-b[0].lo < l.span {
			return i
		}
	}
	return -1
}

func (d *decided) add(b box, allow bool) {
	i := len(d.boxes)
	d.boxes, d.allow = append(d.boxes, b), append(d.allow, allow)
	lv := levelOf(b)
	if lv < 0 {
		d.wide = append(d.wide, i)
		return
	}
	sh := levels[lv].shift
	for k := b[0].lo >> sh; k <= b[0].hi>>sh; k++ {
		d.lvl[lv][k] = append(d.lvl[lv][k], i)
	}
}

// near calls f with every box that may overlap b, once each.
func (d *decided) near(b box, f func(box)) {
	if levelOf(b) < 0 {
		for _, x := range d.boxes {
			f(x)
		}
		return
	}
	for _, i := range d.wide {
		f(d.boxes[i])
	}
	for lv, l := range levels {
		lo, hi := b[0].lo>>l.shift, b[0].hi>>l.shift
		for k := lo; k <= hi; k++ {
			for _, i := range d.lvl[lv][k] {
				// A box filed under several buckets is visited from the
				// first one that b touches only.
				if first := d.boxes[i][0].lo >> l.shift; k != max(first, lo) {
					continue
				}
				f(d.boxes[i])
			}
		}
	}
}

// allowBoxes flattens rules (highest priority first) into the disjoint boxes
// they allow.
func allowBoxes(rules []core.CompiledRule, members map[string][]uint32) []box {
	d := &decided{lvl: [2]map[uint32][]int{{}, {}}}
	for _, r := range rules {
		for _, b := range ruleBoxes(r, members) {
			pieces := []box{b}
			d.near(b, func(x box) {
				if len(pieces) == 0 {
					return
				}
				var next []box
				for _, p := range pieces {
					next = append(next, p.minus(x)...)
				}
				pieces = next
			})
			for _, p := range pieces {
				d.add(p, r.Allow)
			}
		}
	}
	var out []box
	for i, b := range d.boxes {
		if d.allow[i] {
			out = append(out, b)
		}
	}
	return mergeBoxes(out)
}

// mergeBoxes joins boxes that differ only in adjacent address ranges, so
// that a group's members on consecutive addresses cost one element.
func mergeBoxes(bs []box) []box {
	slices.SortFunc(bs, func(a, b box) int {
		for _, i := range []int{1, 2, 0} {
			if a[i].lo != b[i].lo {
				return cmpU(a[i].lo, b[i].lo)
			}
			if a[i].hi != b[i].hi {
				return cmpU(a[i].hi, b[i].hi)
			}
		}
		return 0
	})
	var out []box
	for _, b := range bs {
		if n := len(out); n > 0 && out[n-1][1] == b[1] && out[n-1][2] == b[2] && out[n-1][0].hi+1 == b[0].lo {
			out[n-1][0].hi = b[0].hi
			continue
		}
		out = append(out, b)
	}
	return out
}

func cmpU(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// element renders a box as an nftables set element of type
// ipv4_addr . inet_proto . inet_service.
func (a box) element() string {
	var b strings.Builder
	ip := func(v uint32) string { return core.IPFromUint(v).String() }
	if a[0].lo == a[0].hi {
		b.WriteString(ip(a[0].lo))
	} else {
		b.WriteString(ip(a[0].lo) + "-" + ip(a[0].hi))
	}
	for _, s := range a[1:] {
		if s.lo == s.hi {
			fmt.Fprintf(&b, " . %d", s.lo)
		} else {
			fmt.Fprintf(&b, " . %d-%d", s.lo, s.hi)
		}
	}
	return b.String()
}
