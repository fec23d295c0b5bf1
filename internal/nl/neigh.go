package nl

// Neighbour and FDB dumps, and the underlay link of an address: first needed by
// the linuxbridge driver's VXLAN devices and the OVS driver's MTU.

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// NeighList lists the neighbour entries of family (unix.AF_INET for ARP,
// unix.AF_BRIDGE for forwarding databases) of every link in the namespace of h
// (nil: the caller's), retrying an interrupted dump: acting on a partial list
// would make a reconcile delete entries it did not see.
func NeighList(h *netlink.Handle, family int) ([]netlink.Neigh, error) {
	var err error
	for i := 0; i < dumpRetries; i++ {
		var ns []netlink.Neigh
		if h == nil {
			ns, err = netlink.NeighList(0, family)
		} else {
			ns, err = h.NeighList(0, family)
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return ns, err
		}
	}
	return nil, fmt.Errorf("list neighbours: %w", err)
}

// LinkOfAddr returns the link that holds the IPv4 address ip in the namespace
// of h (nil: the caller's): the underlay interface of a VTEP, whose MTU bounds
// what a tunnel can carry.
func LinkOfAddr(h *netlink.Handle, ip net.IP) (netlink.Link, error) {
	addrs, err := AddrList(h, nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if a.IP.Equal(ip) {
			if h == nil {
				return netlink.LinkByIndex(a.LinkIndex)
			}
			return h.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("address %s is on no interface of this host", ip)
}
