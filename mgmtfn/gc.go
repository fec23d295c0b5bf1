package mgmtfn

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/internal/docker"
	"github.com/netplugin/netplugin/state"
)

// Docker does not tell a driver everything: it never passes a network's name,
// it may delete endpoints without calling the driver (forced cleanup after a
// crash, while the plugin is not loaded), and a network may be removed while
// netplugin is down. The background loop asks Docker — never from a handler —
// and repairs: it names new networks, forgets networks Docker no longer has,
// deletes endpoints Docker no longer has (after two passes), and releases IPAM
// reservations no endpoint took.

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
	dns, err := p.cfg.Store.DockerNetworks(ctx, p.cfg.Host)
	if err != nil {
		p.log.WithError(err).Warn("docker sweep: list networks")
		return 0
	}
	unnamed := 0
	known := map[string]bool{} // Docker endpoint IDs Docker has
	for _, dn := range dns {
		log := p.log.WithFields(logrus.Fields{"docker": dn.ID[:min(12, len(dn.ID))], "net": dn.Tenant + "/" + dn.Network})
		dnet, err := p.cfg.Docker.NetworkInspect(ctx, dn.ID)
		if errors.Is(err, docker.ErrNotFound) {
			if time.Since(dn.Created) > 30*time.Second {
				log.Info("Docker network is gone; forgetting it")
				if err := p.cfg.Store.UnbindDockerNetwork(ctx, p.cfg.Host, dn.ID); err != nil {
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
			if err := p.cfg.Store.RenameNetwork(ctx, dn.Tenant, dn.Network, dnet.Name); err != nil {
				log.WithError(err).WithField("name", dnet.Name).Warn("cannot give the network its Docker name")
			} else {
				log.WithField("name", dnet.Name).Info("network named after its Docker network")
				p.cfg.Agent.Poke()
			}
		}
	}
	if full {
		p.collect(ctx, dns, known)
	}
	return unnamed
}

func (p *Plugin) collect(ctx context.Context, dns []state.DockerNetwork, known map[string]bool) {
	mine := map[string]bool{}
	for _, dn := range dns {
		mine[dn.Tenant+"/"+dn.Network] = true
	}
	eps, err := p.cfg.Store.Endpoints(ctx, "", "")
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]bool{}
	for _, ep := range eps {
		if ep.DockerEndpoint == "" || ep.Host != p.cfg.Host || known[ep.DockerEndpoint] || !mine[ep.NetworkKey()] {
			continue
		}
		seen[ep.Key()] = true
		p.suspect[ep.Key()]++
		// A joined endpoint whose sandbox is gone is stale at once; one never
		// joined may be between CreateEndpoint and Docker storing it, so it
		// waits for a second pass.
		if _, err := os.Stat(ep.NetNS); p.suspect[ep.Key()] < 2 && (ep.NetNS == "" || err == nil) {
			continue
		}
		n, _, err := p.cfg.Store.GetNetwork(ctx, ep.Tenant, ep.Network)
		if err != nil {
			continue
		}
		p.log.WithField("ep", ep.Key()).Info("Docker no longer has this endpoint; removing it and releasing its IP")
		if err := p.removeEndpoint(ctx, n, ep.Name); err != nil {
			p.log.WithError(err).WithField("ep", ep.Key()).Warn("remove stale endpoint")
		}
	}
	for k := range p.suspect {
		if !seen[k] {
			delete(p.suspect, k)
		}
	}
	pend, err := p.cfg.Store.PendingIPs(ctx, p.cfg.Host)
	if err != nil {
		return
	}
	for _, r := range pend {
		if time.Since(r.Since) > 2*p.cfg.GCPeriod+time.Minute {
			_ = p.cfg.Store.ReleaseIP(ctx, r.Tenant, r.Network, r.IP, p.cfg.Host)
		}
	}
}
