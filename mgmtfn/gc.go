package mgmtfn

import (
	"context"
	"errors"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/docker"
	"github.com/netplugin/netplugin/state"
)

// Docker does not tell a driver everything: it never passes a network's name,
// it may delete endpoints without calling the driver (forced cleanup after a
// crash, while the plugin is not loaded), and a network may be removed while
// netplugin is down. The background loop asks Docker — never from a handler —
// and repairs: it names new networks, forgets networks Docker no longer has,
// deletes endpoints Docker no longer has, and frees addresses Docker's IPAM
// gave out that no endpoint took, or held for a ReleaseAddress that never came.

// kickSoon asks the loop to run now (a network was just created).
func (p *Plugin) kickSoon() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *Plugin) background(ctx context.Context) {
	tick := time.NewTicker(p.cfg.GCPeriod)
	defer tick.Stop()
	// Networks mapped by a version without the per-network index get it now.
	for err := p.dk.IndexNetworks(ctx, p.cfg.Host); err != nil; err = p.dk.IndexNetworks(ctx, p.cfg.Host) {
		if ctx.Err() != nil {
			return
		}
		p.log.WithError(err).Warn("index Docker networks; retrying")
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.sweep(ctx, true)
		case <-p.kick:
			// Docker stores the network only after CreateNetwork returns: try
			// naming a few times, briefly.
			for i := 0; i < 20 && p.sweep(ctx, false) > 0; i++ {
				select {
				case <-ctx.Done():
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
	}
}

// sweep runs one pass and returns how many networks still wait for their name.
// full also collects garbage.
func (p *Plugin) sweep(ctx context.Context, full bool) int {
	if p.cfg.Docker == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.GCPeriod)
	defer cancel()
	if err := p.cfg.Docker.Ping(ctx); err != nil {
		return 0 // Docker down or restarting: judge nothing now
	}
	dns, err := p.dk.Networks(ctx, p.cfg.Host)
	if err != nil {
		p.log.WithError(err).Warn("docker sweep: list networks")
		return 0
	}
	// Our endpoints are read before Docker's view, never after: Docker stores an
	// endpoint before it joins it, so one that was joined when we read it and
	// that Docker's later view lacks is one Docker deleted. Read the other way
	// round, a container joined in between would look deleted.
	var eps []core.Endpoint
	if full {
		if eps, err = p.dockerEndpoints(ctx, dns); err != nil {
			p.log.WithError(err).Warn("docker sweep: list endpoints")
			full = false
		}
	}
	unnamed := 0
	known := map[string]bool{} // Docker endpoint IDs Docker has
	for _, dn := range dns {
		log := p.log.WithFields(logrus.Fields{"docker": dn.ID[:min(12, len(dn.ID))], "net": dn.Tenant + "/" + dn.Network})
		dnet, err := p.cfg.Docker.NetworkInspect(ctx, dn.ID)
		if errors.Is(err, docker.ErrNotFound) {
			if time.Since(dn.Created) > 30*time.Second {
				log.Info("Docker network is gone; forgetting it")
				if err := p.dk.Unbind(ctx, p.cfg.Host, dn.ID); err != nil {
					log.WithError(err).Warn("forget Docker network")
				}
			} else if state.IsProvisional(dn.Network) {
				unnamed++
			}
			continue
		}
		if err != nil {
			log.WithError(err).Debug("docker sweep: inspect network")
			return 0
		}
		for eid := range dnet.Endpoints {
			known[eid] = true
		}
		if state.IsProvisional(dn.Network) && dnet.Name != "" {
			switch err := p.rename(ctx, dn, dnet.Name); {
			case errors.Is(err, errHandOffInFlight):
				unnamed++ // soon
			case err != nil:
				log.WithError(err).WithField("name", dnet.Name).Warn("cannot give the network its Docker name")
			default:
				log.WithField("name", dnet.Name).Info("network named after its Docker network")
				p.cfg.Agent.Poke()
			}
		}
	}
	if full {
		p.collect(ctx, dns, eps, known)
	}
	return unnamed
}

var errHandOffInFlight = errors.New("a link handed to Docker is not in its sandbox yet")

// rename gives a network its Docker name. Renaming changes the network's key,
// and with it what the agent builds every endpoint from: a link Docker has not
// moved into its sandbox yet would be rebuilt from under it, so the rename
// waits until no such link is left, and runs while no Join or sync does.
func (p *Plugin) rename(ctx context.Context, dn state.DockerNetwork, name string) error {
	return p.cfg.Agent.Exclusive(ctx, func(ctx context.Context) (int64, error) {
		eps, err := p.cfg.Store.HostEndpoints(ctx, p.cfg.Host)
		if err != nil {
			return 0, err
		}
		for _, ep := range eps {
			if ep.NetworkKey() != dn.Tenant+"/"+dn.Network || ep.NetNS == "" {
				continue
			}
			if _, err := netlink.LinkByName(core.HandOffIfName(ep.Key())); err == nil {
				return 0, errHandOffInFlight
			}
		}
		return 0, p.dk.Rename(ctx, dn.Tenant, dn.Network, name)
	})
}

// dockerEndpoints lists this host's Docker endpoints on its Docker networks,
// from the host's own index.
func (p *Plugin) dockerEndpoints(ctx context.Context, dns []state.DockerNetwork) ([]core.Endpoint, error) {
	mine := map[string]bool{}
	for _, dn := range dns {
		mine[dn.Tenant+"/"+dn.Network] = true
	}
	eps, err := p.cfg.Store.HostEndpoints(ctx, p.cfg.Host)
	if err != nil {
		return nil, err
	}
	var out []core.Endpoint
	for _, ep := range eps {
		if ep.DockerEndpoint != "" && ep.Host == p.cfg.Host && mine[ep.NetworkKey()] {
			out = append(out, ep)
		}
	}
	return out, nil
}

// collect removes the endpoints Docker no longer has (eps were read before
// Docker's view, known) and frees the reservations Docker never took or
// released.
func (p *Plugin) collect(ctx context.Context, dns []state.DockerNetwork, eps []core.Endpoint, known map[string]bool) {
	byNet := map[string]state.DockerNetwork{}
	for _, dn := range dns {
		byNet[dn.Tenant+"/"+dn.Network] = dn
	}
	seen := map[string]bool{}
	for _, ep := range eps {
		if known[ep.DockerEndpoint] {
			continue
		}
		seen[ep.Key()] = true
		p.mu.Lock()
		p.suspect[ep.Key()]++
		passes := p.suspect[ep.Key()]
		p.mu.Unlock()
		// One never joined may be between CreateEndpoint and Docker storing it,
		// so it waits for a second pass; a joined one Docker had stored.
		if ep.NetNS == "" && passes < 2 {
			continue
		}
		n, _, err := p.cfg.Store.GetNetwork(ctx, ep.Tenant, ep.Network)
		if err != nil {
			continue
		}
		p.log.WithField("ep", ep.Key()).Info("Docker no longer has this endpoint; removing it")
		if err := p.removeEndpoint(ctx, byNet[ep.NetworkKey()], n, ep.Name); err != nil {
			p.log.WithError(err).WithField("ep", ep.Key()).Warn("remove stale endpoint")
		}
	}
	p.mu.Lock()
	for k := range p.suspect {
		if !seen[k] {
			delete(p.suspect, k)
		}
	}
	for k, at := range p.released {
		if time.Since(at) > p.reservationTTL() {
			delete(p.released, k) // its endpoint went some other way
		}
	}
	p.mu.Unlock()
	// This host's reservations come from its own index: the sweep reads
	// nothing of the other hosts.
	res, err := p.dk.HostReservations(ctx, p.cfg.Host)
	if err != nil {
		p.log.WithError(err).Warn("docker sweep: list reservations")
		return
	}
	for _, r := range res {
		if time.Since(r.Since) > p.reservationTTL() {
			p.log.WithFields(logrus.Fields{"net": r.Tenant + "/" + r.Network, "ip": r.IP, "held": r.Held}).Info("Docker never took or released this address; freeing it")
			_ = p.dk.DropReservation(ctx, r)
		}
	}
}

// reservationTTL is how long an address Docker's IPAM gave out may wait for
// its CreateEndpoint, or a deleted endpoint's address for its ReleaseAddress:
// both follow within milliseconds unless dockerd died in between.
func (p *Plugin) reservationTTL() time.Duration { return 2*p.cfg.GCPeriod + time.Minute }
