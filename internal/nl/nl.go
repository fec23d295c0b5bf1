// Package nl wraps the few netlink calls drivers share: dumps that retry when the
// kernel reports the dump was interrupted by a concurrent change, ownership marks
// in link aliases, and work inside another network namespace.
package nl

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// dumpRetries bounds retries of an interrupted dump; a dump is interrupted only by
// a concurrent change, so a few tries always suffice in practice.
const dumpRetries = 5

// LinkList lists links, retrying an interrupted dump instead of acting on a
// partial list (which would make a reconcile remove links it did not see).
func LinkList(h *netlink.Handle) ([]netlink.Link, error) {
	var err error
	for i := 0; i < dumpRetries; i++ {
		var links []netlink.Link
		if h == nil {
			links, err = netlink.LinkList()
		} else {
			links, err = h.LinkList()
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}

// IsNotFound reports whether err means the link does not exist.
func IsNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// Mark is the alias prefix of every link netplugin owns. The alias survives agent
// restarts and carries the fingerprint of the spec the link was built from.
const Mark = "netplugin:"

// Alias builds "netplugin:<kind>:<field>:<field>...".
func Alias(kind string, fields ...string) string {
	return Mark + kind + ":" + strings.Join(fields, ":")
}

// ParseAlias returns the fields of an alias of the given kind, or false when the
// link is not ours (or not of that kind).
func ParseAlias(alias, kind string, n int) ([]string, bool) {
	rest, ok := strings.CutPrefix(alias, Mark+kind+":")
	if !ok {
		return nil, false
	}
	f := strings.SplitN(rest, ":", n)
	if len(f) != n {
		return nil, false
	}
	return f, true
}

// InNS opens the namespace at path and returns a netlink handle working inside
// it. The handle talks to that namespace through its own socket, so no thread
// ever switches namespace.
func InNS(path string) (*netlink.Handle, netns.NsHandle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, 0, fmt.Errorf("open netns %s: %w", path, err)
	}
	// Routing only: a handle for every netlink family would also open XFRM and
	// netfilter sockets, which fail on kernels without those modules loaded.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, 0, fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	return h, ns, nil
}

// FreeIfName returns the lowest "<prefix>N" not used in the namespace of h, as
// Docker names a container's interfaces eth0, eth1, ...
func FreeIfName(h *netlink.Handle, prefix string) (string, error) {
	links, err := LinkList(h)
	if err != nil {
		return "", err
	}
	used := make(map[string]bool, len(links))
	for _, l := range links {
		used[l.Attrs().Name] = true
	}
	for i := 0; ; i++ {
		if n := fmt.Sprintf("%s%d", prefix, i); !used[n] {
			return n, nil
		}
	}
}

// ContainerIf says how to configure an endpoint's interface inside its namespace.
type ContainerIf struct {
	IP      string // plain IP
	Prefix  int    // subnet length
	Gateway string // plain IP or ""
}

// ConfigureIf gives link (already inside h's namespace) its address, brings it up
// and, when the namespace has no default route yet, routes through the gateway. An
// existing default route is left alone: it belongs to the container's first network.
func ConfigureIf(h *netlink.Handle, link netlink.Link, c ContainerIf) error {
	addr, err := netlink.ParseAddr(fmt.Sprintf("%s/%d", c.IP, c.Prefix))
	if err != nil {
		return fmt.Errorf("address %s/%d: %w", c.IP, c.Prefix, err)
	}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, link.Attrs().Name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", link.Attrs().Name, err)
	}
	if c.Gateway == "" {
		return nil
	}
	gw := netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.ParseIP(c.Gateway)}
	if err := h.RouteAdd(&gw); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("default route via %s: %w", c.Gateway, err)
	}
	return nil
}
