// Package routes keeps the routes netplugin installs toward other hosts (the
// blocks of routed networks) equal to a desired set. Its routes carry their own
// protocol number, so it never touches a route it did not make.
package routes

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/internal/nl"
)

// Proto marks netplugin's routes (`ip route show proto 201`).
const Proto = netlink.RouteProtocol(201)

// Route is a destination reached through a next hop on the underlay.
type Route struct {
	Dst *net.IPNet
	Via net.IP
}

// Syncer installs routes in one namespace.
type Syncer struct {
	h *netlink.Handle
}

// New returns a syncer for the namespace at path ("" = the current one).
func New(path string) (*Syncer, error) {
	if path == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		return &Syncer{h: h}, nil
	}
	h, ns, err := nl.InNS(path)
	if err != nil {
		return nil, err
	}
	ns.Close() // the handle's sockets keep the namespace
	return &Syncer{h: h}, nil
}

// Close releases the handle.
func (s *Syncer) Close() { s.h.Close() }

// Sync makes the netplugin routes of the main table equal to want.
func (s *Syncer) Sync(want []Route) error {
	have, err := s.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: Proto, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list routes: %w", err)
	}
	wanted := map[string]Route{}
	for _, r := range want {
		wanted[r.Dst.String()] = r
	}
	var errs []error
	for _, r := range have {
		if w, ok := wanted[r.Dst.String()]; ok && r.Gw.Equal(w.Via) {
			delete(wanted, r.Dst.String()) // in place
			continue
		}
		if err := s.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove route %s: %w", r.Dst, err))
		}
	}
	for _, w := range wanted {
		r := &netlink.Route{Dst: w.Dst, Gw: w.Via, Protocol: Proto}
		if err := s.h.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", w.Dst, w.Via, err))
		}
	}
	return errors.Join(errs...)
}
