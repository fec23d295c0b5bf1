package core

import (
	"encoding/binary"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Tag limits from 802.1Q and the VXLAN header.
const (
	MaxVLAN = 4094
	MaxVNI  = 16777215
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidName checks a tenant, network or endpoint name. Names end up in etcd keys
// and link aliases, so '/' and spaces are refused.
func ValidName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: %s name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalid, kind, name)
	}
	return nil
}

// MaxTag is the largest tag of an encapsulation.
func MaxTag(encap string) int {
	if encap == EncapVXLAN {
		return MaxVNI
	}
	return MaxVLAN
}

// ValidateNetwork checks a network on its own (not against other networks).
// Subnet must already be set.
func ValidateNetwork(n Network) error {
	if err := ValidName("tenant", n.Tenant); err != nil {
		return err
	}
	if err := ValidName("network", n.Name); err != nil {
		return err
	}
	if n.Encap != EncapVLAN && n.Encap != EncapVXLAN {
		return fmt.Errorf("%w: tag type %q: want vlan or vxlan", ErrInvalid, n.Encap)
	}
	if n.Tag < 1 || n.Tag > MaxTag(n.Encap) {
		return fmt.Errorf("%w: %s tag %d out of range 1-%d", ErrInvalid, n.Encap, n.Tag, MaxTag(n.Encap))
	}
	sn, err := ParseCIDR(n.Subnet)
	if err != nil {
		return err
	}
	if ones, _ := sn.Mask.Size(); ones > 30 {
		return fmt.Errorf("%w: subnet %s too small: at most /30", ErrInvalid, n.Subnet)
	}
	if err := checkOptions(n); err != nil {
		return err
	}
	if n.Gateway != "" {
		gw, err := ParseIPv4(n.Gateway)
		if err != nil {
			return fmt.Errorf("%w: invalid gateway %q", ErrInvalid, n.Gateway)
		}
		if !usable(sn, gw) {
			return fmt.Errorf("%w: gateway %s is outside subnet %s (or is its network/broadcast address)", ErrInvalid, gw, sn)
		}
	}
	return nil
}

// ValidateEndpointIP checks that ip is a usable host address of the network and
// not its gateway.
func ValidateEndpointIP(n Network, ip string) error {
	sn, err := ParseCIDR(n.Subnet)
	if err != nil {
		return err
	}
	addr, err := ParseIPv4(ip)
	if err != nil {
		return err
	}
	if !usable(sn, addr) {
		return fmt.Errorf("%w: IP %s is outside subnet %s of network %s (or is its network/broadcast address)", ErrInvalid, addr, sn, n.Key())
	}
	if n.Gateway != "" && addr.Equal(net.ParseIP(n.Gateway)) {
		return fmt.Errorf("%w: IP %s is the gateway of network %s", ErrInUse, addr, n.Key())
	}
	return nil
}

// usable: inside the subnet and neither its network nor its broadcast address.
func usable(sn *net.IPNet, ip net.IP) bool {
	ip = ip.To4()
	if ip == nil || !sn.Contains(ip) {
		return false
	}
	first, last := SubnetBounds(sn)
	v := binary.BigEndian.Uint32(ip)
	return v > first && v < last
}

// SubnetBounds returns the network and broadcast addresses as integers.
func SubnetBounds(sn *net.IPNet) (uint32, uint32) {
	base := binary.BigEndian.Uint32(sn.IP.To4())
	ones, bits := sn.Mask.Size()
	return base, base | (1<<uint(bits-ones) - 1)
}

// IPFromUint converts a host-order integer to an IP.
func IPFromUint(v uint32) net.IP {
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, v)
	return ip
}

// IPToUint converts an IPv4 address to a host-order integer.
func IPToUint(ip net.IP) uint32 { return binary.BigEndian.Uint32(ip.To4()) }

// Overlaps reports whether two subnets share an address.
func Overlaps(a, b *net.IPNet) bool { return a.Contains(b.IP) || b.Contains(a.IP) }

// Range is an inclusive range of tags.
type Range struct{ Lo, Hi int }

// ParseRanges parses "10-100,150,200-300" into sorted ranges within 1..max.
func ParseRanges(s string, max int) ([]Range, error) {
	var out []Range
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, found := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var err2 error
		if found {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 1 || b > max || a > b {
			return nil, fmt.Errorf("%w: range %q: want N-M within 1-%d", ErrInvalid, part, max)
		}
		out = append(out, Range{a, b})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty range %q", ErrInvalid, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Lo < out[j].Lo })
	return out, nil
}

// InRanges reports whether v lies in one of rs.
func InRanges(rs []Range, v int) bool {
	for _, r := range rs {
		if v >= r.Lo && v <= r.Hi {
			return true
		}
	}
	return false
}

// ValidateGlobal checks the global configuration.
func ValidateGlobal(g Global) error {
	if _, err := ParseRanges(g.VLANs, MaxVLAN); err != nil {
		return fmt.Errorf("vlans: %w", err)
	}
	if _, err := ParseRanges(g.VXLANs, MaxVNI); err != nil {
		return fmt.Errorf("vxlans: %w", err)
	}
	if t := g.DefaultTagType; t != "" && t != EncapVLAN && t != EncapVXLAN {
		return fmt.Errorf("%w: default tag type %q: want vlan or vxlan", ErrInvalid, t)
	}
	pool, err := ParseCIDR(g.SubnetPool)
	if err != nil {
		return fmt.Errorf("subnet pool: %w", err)
	}
	ones, _ := pool.Mask.Size()
	if g.SubnetLen < ones || g.SubnetLen > 30 {
		return fmt.Errorf("%w: subnet length /%d must lie between the pool's /%d and /30", ErrInvalid, g.SubnetLen, ones)
	}
	return nil
}

// DriverOptions returns the options a built-in driver understands, and false
// for a driver netplugin does not have. The drivers check values; keys are
// checked here too, so that a typo is refused when the network is created,
// not reported by every agent later.
func DriverOptions(driver string) ([]string, bool) {
	switch driver {
	case "linuxbridge", "ovs":
		return nil, true
	case "macvlan":
		return []string{"parent", "mode", "vlan"}, true
	case "ipvlan":
		return []string{"parent", "mode", "host-prefix"}, true
	case "hostnic":
		return []string{"nic", "mac", "force"}, true
	}
	return nil, false
}

func checkOptions(n Network) error {
	known, ok := DriverOptions(n.Driver)
	if !ok {
		return nil // the agents report a driver they do not have
	}
	keys := make([]string, 0, len(n.Options))
	for k := range n.Options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		found := false
		for _, o := range known {
			found = found || o == k
		}
		if !found {
			have := "none"
			if len(known) > 0 {
				have = strings.Join(known, ", ")
			}
			return fmt.Errorf("%w: driver %s has no option %q (its options: %s)", ErrInvalid, n.Driver, k, have)
		}
	}
	return nil
}
