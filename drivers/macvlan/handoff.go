package macvlan

// Docker networks. Docker's Join comes before the sandbox's namespace exists,
// so the child cannot be created inside it: PrepareHandOff creates it in the
// host namespace under core.HandOffIfName, marked and recorded like any child,
// and Docker moves it into the sandbox, renames it ethN and configures it. On
// Leave Docker moves it back under that name, and RemoveEndpoint deletes it.
//
// Such an endpoint's record has the sandbox path as NetNSPath and
// core.SandboxNetNSID(path) as NetNSID. That ID is never compared with an
// inode: the path names the sandbox, and the namespace behind it may not be
// bound yet. So the driver looks for the child in two places, the host
// namespace (by alias, or unmarked under the hand-off name after a crash
// between creating and marking it) and the sandbox (by alias). A sound child
// found in either counts as healthy, up or not, addressed or not: Docker, not
// the agent, configures a handed-off link, and configuring it behind Docker's
// back would make Docker's own address add fail the container's start.

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// PrepareHandOff creates the endpoint's child in the host namespace, named
// core.HandOffIfName, with the endpoint's MAC, for Docker to move into the
// sandbox. A repeated call finds the child still waiting there.
func (d *Driver) PrepareHandOff(ctx context.Context, ep core.EndpointSpec) (string, error) {
	if !core.IsSandboxNetNSID(ep.NetNSID) {
		return "", fmt.Errorf("%w: endpoint %s: hand-off needs a sandbox ID (core.SandboxNetNSID), got %q", core.ErrInvalid, ep.Key(), ep.NetNSID)
	}
	t, err := d.target(ep)
	if err != nil {
		return "", err
	}
	if err := d.adopt(t.rec); err != nil {
		return "", err
	}
	// A child of this endpoint already inside the sandbox is left from an
	// earlier attempt: Docker moves in the one returned here.
	if err := d.deleteInNS(t.rec); err != nil {
		return "", err
	}
	child, err := d.keepHostChild(t)
	if err == nil && child == nil {
		child, err = d.createHostChild(t)
	}
	if err != nil {
		return "", err
	}
	d.log.WithFields(logrus.Fields{"ep": ep.Key(), "link": child.Attrs().Name, "lower": t.rec.Lower, "sandbox": ep.NetNSPath}).Debug("child handed off")
	return child.Attrs().Name, nil
}

// Moving a link to another namespace hides it from both for an RCU grace
// period, so a handed-off link Docker is moving may be found nowhere for a
// moment: ensureSandboxed looks again transitTries times, transitPause apart,
// before making a new one.
const (
	transitTries = 5
	transitPause = 40 * time.Millisecond
)

// ensureSandboxed ensures an endpoint of a Docker sandbox. A sound child
// waiting in the host namespace, or inside the sandbox, is left alone: Docker
// configures it. Otherwise a bound sandbox gets its child repaired or made
// inside, as any namespace; a sandbox not bound yet (or gone) gets a child in
// the host namespace again, as PrepareHandOff makes it.
func (d *Driver) ensureSandboxed(ctx context.Context, t target, obs core.ObservedEndpoint, log *logrus.Entry) (core.ObservedEndpoint, error) {
	for try := 1; ; try++ {
		child, err := d.keepHostChild(t)
		if err != nil {
			return obs, err
		}
		if child != nil {
			obs.IfName, obs.IfIndex, obs.Healthy = child.Attrs().Name, child.Attrs().Index, true
			return obs, nil
		}
		h, ns, gone, err := openNS(t.rec)
		if err != nil {
			return obs, fmt.Errorf("endpoint %s: %w", t.rec.Key, err)
		}
		if !gone {
			children, err := childrenOf(h, t.rec.Key)
			if err == nil && (len(children) > 0 || try == transitTries) {
				defer ns.Close()
				defer h.Close()
				if len(children) == 1 && children[0].Fields[0] == t.rec.Fingerprint && sound(children[0].Link, t.lower.Attrs().Index, t.rec) {
					attrs := children[0].Link.Attrs()
					obs.IfName, obs.IfIndex, obs.Healthy = attrs.Name, attrs.Index, true
					return obs, nil
				}
				return d.ensureIn(h, ns, t, obs, log)
			}
			ns.Close()
			h.Close()
			if err != nil {
				return obs, fmt.Errorf("endpoint %s: netns %s: %w", t.rec.Key, t.rec.NetNSPath, err)
			}
		} else if try == transitTries {
			if child, err = d.createHostChild(t); err != nil {
				return obs, err
			}
			log.WithField("link", child.Attrs().Name).Info("child made again in the host namespace for Docker to move")
			obs.IfName, obs.IfIndex, obs.Healthy = child.Attrs().Name, child.Attrs().Index, true
			return obs, nil
		}
		select {
		case <-ctx.Done():
			return obs, ctx.Err()
		case <-time.After(transitPause):
		}
	}
}

// keepHostChild returns the endpoint's child in the host namespace if it is
// sound and from this spec, deleting any other child of the endpoint there.
func (d *Driver) keepHostChild(t target) (netlink.Link, error) {
	children, err := d.hostChildren(t.rec.Key)
	if err != nil {
		return nil, err
	}
	var keep netlink.Link
	for _, c := range children {
		if keep == nil && c.Fields[0] == t.rec.Fingerprint && sound(c.Link, t.lower.Attrs().Index, t.rec) {
			keep = c.Link
			continue
		}
		if err := d.host.LinkDel(c.Link); err != nil && !nl.IsNotFound(err) {
			return nil, fmt.Errorf("endpoint %s: remove outdated %s: %w", t.rec.Key, c.Link.Attrs().Name, err)
		}
	}
	return keep, nil
}

// createHostChild creates the endpoint's child in the host namespace under
// its hand-off name and marks it. A refused child leaves no record either.
func (d *Driver) createHostChild(t target) (netlink.Link, error) {
	rec := t.rec
	name := core.HandOffIfName(rec.Key)
	mv := &netlink.Macvlan{Mode: t.mode, LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: t.lower.Attrs().Index, HardwareAddr: t.mac}}
	if err := d.host.LinkAdd(mv); err != nil {
		_ = d.eps.Del(rec.Key)
		return nil, fmt.Errorf("endpoint %s: %w", rec.Key, addError(err, rec))
	}
	child, err := d.host.LinkByName(name)
	if err == nil {
		// The kernel ignores an alias given at creation; until it is set, the
		// hand-off name marks the child as the endpoint's.
		err = d.host.LinkSetAlias(child, nl.Alias(kindEP, rec.Fingerprint, rec.Key))
	}
	if err == nil {
		child, err = d.host.LinkByName(name)
	}
	if err != nil {
		_ = d.host.LinkDel(mv)
		_ = d.eps.Del(rec.Key)
		return nil, fmt.Errorf("endpoint %s: mark %s: %w", rec.Key, name, err)
	}
	return child, nil
}

// deleteHostChildren deletes the endpoint's children in the host namespace:
// one waiting for Docker, or one Docker's Leave gave back.
func (d *Driver) deleteHostChildren(key string) error {
	children, err := d.hostChildren(key)
	if err != nil {
		return err
	}
	for _, c := range children {
		if err := d.host.LinkDel(c.Link); err != nil && !nl.IsNotFound(err) {
			return fmt.Errorf("endpoint %s: delete %s: %w", key, c.Link.Attrs().Name, err)
		}
	}
	return nil
}

// hostChildren lists the endpoint's children in the host namespace.
func (d *Driver) hostChildren(key string) ([]nl.OwnedLink, error) {
	links, err := nl.LinkList(d.host)
	if err != nil {
		return nil, err
	}
	byName := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}
	return handedOff(indexHandedOff(links), byName, key), nil
}

// deleteInNS deletes the endpoint's children inside its recorded namespace, if
// that exists.
func (d *Driver) deleteInNS(rec epRecord) error {
	h, ns, gone, err := openNS(rec)
	if gone {
		return nil
	}
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", rec.Key, err)
	}
	defer ns.Close()
	defer h.Close()
	children, err := childrenOf(h, rec.Key)
	if err != nil {
		return fmt.Errorf("endpoint %s: netns %s: %w", rec.Key, rec.NetNSPath, err)
	}
	for _, c := range children {
		if err := h.LinkDel(c.Link); err != nil && !nl.IsNotFound(err) {
			return fmt.Errorf("endpoint %s: delete %s in %s: %w", rec.Key, c.Link.Attrs().Name, rec.NetNSPath, err)
		}
	}
	return nil
}

// indexHandedOff maps endpoint keys to the marked children among links.
func indexHandedOff(links []netlink.Link) map[string][]nl.OwnedLink {
	idx := map[string][]nl.OwnedLink{}
	for _, l := range links {
		if f, ok := nl.ParseAlias(l.Attrs().Alias, kindEP, 2); ok {
			idx[f[1]] = append(idx[f[1]], nl.OwnedLink{Link: l, Fields: f})
		}
	}
	return idx
}

// handedOff lists the endpoint's children in the host namespace: marked ones
// from idx, and from byName (nil: not looked at) an unmarked one under the
// hand-off name, left by a crash before marking (with no fingerprint, so that
// it is never kept).
func handedOff(idx map[string][]nl.OwnedLink, byName map[string]netlink.Link, key string) []nl.OwnedLink {
	out := append([]nl.OwnedLink(nil), idx[key]...)
	if l, ok := byName[core.HandOffIfName(key)]; ok && isUnmarkedChild(l) {
		out = append(out, nl.OwnedLink{Link: l, Fields: []string{"", key}})
	}
	return out
}

func isUnmarkedChild(l netlink.Link) bool {
	_, mv := l.(*netlink.Macvlan)
	return mv && l.Attrs().Alias == ""
}
