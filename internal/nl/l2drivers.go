package nl

// Helpers first needed by the macvlan and hostnic drivers: dumps of addresses and
// routes with the same interrupted-dump retry as LinkList, finding our links by
// alias, and identifying a namespace file.

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AddrList lists the addresses of link (nil: all links) in the namespace of h
// (nil: the caller's), retrying an interrupted dump.
func AddrList(h *netlink.Handle, link netlink.Link, family int) ([]netlink.Addr, error) {
	var err error
	for i := 0; i < dumpRetries; i++ {
		var addrs []netlink.Addr
		if h == nil {
			addrs, err = netlink.AddrList(link, family)
		} else {
			addrs, err = h.AddrList(link, family)
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return addrs, err
		}
	}
	return nil, fmt.Errorf("list addresses: %w", err)
}

// RouteList lists the main-table routes of family in the namespace of h (nil:
// the caller's), retrying an interrupted dump.
func RouteList(h *netlink.Handle, family int) ([]netlink.Route, error) {
	var err error
	for i := 0; i < dumpRetries; i++ {
		var routes []netlink.Route
		if h == nil {
			routes, err = netlink.RouteList(nil, family)
		} else {
			routes, err = h.RouteList(nil, family)
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return routes, err
		}
	}
	return nil, fmt.Errorf("list routes: %w", err)
}

// DefaultRouteLinks returns the indexes of the links that carry an IPv4 or IPv6
// default route (directly or as a multipath next hop) in the namespace of h.
func DefaultRouteLinks(h *netlink.Handle) (map[int]bool, error) {
	out := map[int]bool{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := RouteList(h, fam)
		if err != nil {
			return nil, err
		}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			if r.LinkIndex > 0 {
				out[r.LinkIndex] = true
			}
			for _, nh := range r.MultiPath {
				out[nh.LinkIndex] = true
			}
		}
	}
	return out, nil
}

// OwnedLink is a link whose alias marks it as ours, with the alias fields parsed.
type OwnedLink struct {
	Link   netlink.Link
	Fields []string
}

// LinksOfKind lists the links in the namespace of h whose alias is of kind with n
// fields. It is how a driver finds its links in a container's namespace, where
// names (eth0, eth1, ...) say nothing about ownership.
func LinksOfKind(h *netlink.Handle, kind string, n int) ([]OwnedLink, error) {
	links, err := LinkList(h)
	if err != nil {
		return nil, err
	}
	var out []OwnedLink
	for _, l := range links {
		if f, ok := ParseAlias(l.Attrs().Alias, kind, n); ok {
			out = append(out, OwnedLink{Link: l, Fields: f})
		}
	}
	return out, nil
}

// NetNSID identifies the namespace file at path as "device:inode", the form the
// agent puts in EndpointSpec.NetNSID: a path reused by a new namespace gets a new ID.
func NetNSID(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", path, err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

// nsfsMagic is the statfs type of namespace files (NSFS_MAGIC).
const nsfsMagic = 0x6e736673

// CheckNetNS identifies the network namespace file at path ("device:inode")
// after checking that it is one (a bind mount of nsfs, or /proc/PID/ns/net)
// and that it is not one of the given namespaces the agent must never plug
// containers into: its own, where the host's interfaces live.
func CheckNetNS(path string, forbidden ...string) (string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return "", fmt.Errorf("netns %s: %w", path, err)
	}
	if fs.Type != nsfsMagic {
		return "", fmt.Errorf("netns %s is not a network namespace (not an nsfs file)", path)
	}
	id, err := NetNSID(path)
	if err != nil {
		return "", err
	}
	for _, f := range forbidden {
		if f != "" && id == f {
			return "", fmt.Errorf("netns %s is the host's own network namespace: refused", path)
		}
	}
	return id, nil
}
