package ipvlan

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
// between creating and marking it) and the sandbox (by alias). A child from
// this spec, in the network's mode, on its parent, found in either, counts as
// healthy, up or not, addressed or not: Docker, not the agent, configures a
// handed-off link, and configuring it behind Docker's back would make Docker's
// own address add fail the container's start.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/nl"
)

// PrepareHandOff creates the endpoint's child in the host namespace, named
// core.HandOffIfName, for Docker to move into the sandbox. It has the parent's
// MAC, as every ipvlan child. A repeated call finds the child still waiting.
func (d *Driver) PrepareHandOff(ctx context.Context, ep core.EndpointSpec) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if !core.IsSandboxNetNSID(ep.NetNSID) {
		return "", fmt.Errorf("%w: endpoint %s: hand-off needs a sandbox ID (core.SandboxNetNSID), got %q", core.ErrInvalid, ep.Key(), ep.NetNSID)
	}
	want, o, err := wantRecord(ep)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	h, done, err := d.host()
	if err != nil {
		return "", err
	}
	defer done()
	parent, err := parentLink(h, ep.Net.Key(), o.Parent)
	if err != nil {
		return "", err
	}
	if err := d.checkParentMode(ep.Net.Key(), o); err != nil {
		return "", err
	}
	rec, had, err := d.recs.getEP(ep.Key())
	if err != nil {
		return "", err
	}
	if had && (rec.NetNSPath != want.NetNSPath || rec.NetNSID != want.NetNSID) {
		if err := d.deleteChildren(h, rec); err != nil {
			return "", fmt.Errorf("endpoint %s: leave old namespace: %w", ep.Key(), err)
		}
	}
	// A child of this endpoint already inside the sandbox is left from an
	// earlier attempt: Docker moves in the one returned here.
	if err := d.deleteInSandbox(want); err != nil {
		return "", fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	link, err := d.keepHostChild(h, want, parent.Attrs().Index)
	if err == nil && link == nil {
		link, err = d.createHostChild(h, parent, want, had)
	}
	if err != nil {
		return "", err
	}
	if err := d.recordChild(want, rec, had, link); err != nil {
		return "", err
	}
	d.log.WithFields(logrus.Fields{"ep": ep.Key(), "link": link.Attrs().Name, "parent": o.Parent, "sandbox": ep.NetNSPath}).Debug("child handed off")
	return link.Attrs().Name, nil
}

// Moving a link to another namespace hides it from both for an RCU grace
// period, so a handed-off link Docker is moving may be found nowhere for a
// moment: findSandboxed looks again transitTries times, transitPause apart,
// before reporting it missing.
const (
	transitTries = 5
	transitPause = 40 * time.Millisecond
)

// sandboxedChild is where findSandboxed found an endpoint's child.
type sandboxedChild struct {
	link  netlink.Link // the sound child, in the host namespace or the sandbox; nil: none
	bound bool         // the sandbox has its namespace: ch and cns are open on it
	ch    *netlink.Handle
	cns   netns.NsHandle
}

func (s sandboxedChild) close() {
	s.cns.Close()
	s.ch.Close()
}

// findSandboxed finds the sound child of want's endpoint: waiting in the host
// namespace h (other children of the endpoint there are deleted), or alone
// inside the sandbox. Inside, it is left as it is: Docker configures it. When
// the sandbox is bound the result holds it open; the caller closes it.
func (d *Driver) findSandboxed(ctx context.Context, h *netlink.Handle, want epRecord, parentIndex int) (sandboxedChild, error) {
	for try := 1; ; try++ {
		var s sandboxedChild
		var err error
		if s.link, err = d.keepHostChild(h, want, parentIndex); err != nil || s.link != nil {
			return s, err
		}
		var gone bool
		if s.ch, s.cns, gone, err = openSandbox(want.NetNSPath); err != nil {
			return s, fmt.Errorf("endpoint %s: %w", want.Key, err)
		}
		s.bound = !gone
		if s.bound {
			kids, err := d.ourChildren(s.ch, want.Key)
			if err != nil {
				s.close()
				return sandboxedChild{}, fmt.Errorf("list links in %s: %w", want.NetNSPath, err)
			}
			if len(kids) == 1 && reusable(kids[0], want.Fingerprint, want.Mode, parentIndex) {
				s.link = kids[0].link
			}
			if len(kids) > 0 || try == transitTries {
				return s, nil
			}
			s.close()
		} else if try == transitTries {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return sandboxedChild{}, ctx.Err()
		case <-time.After(transitPause):
		}
	}
}

// keepHostChild returns the endpoint's child in the host namespace h if it is
// from want's spec, in its mode, on the parent; any other child of the
// endpoint there is deleted.
func (d *Driver) keepHostChild(h *netlink.Handle, want epRecord, parentIndex int) (netlink.Link, error) {
	kids, err := d.hostChildren(h, want.Key)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", want.Key, err)
	}
	var keep netlink.Link
	for _, c := range kids {
		if keep == nil && reusable(c, want.Fingerprint, want.Mode, parentIndex) {
			keep = c.link
			continue
		}
		if err := h.LinkDel(c.link); err != nil && !nl.IsNotFound(err) {
			return nil, fmt.Errorf("endpoint %s: remove outdated %s: %w", want.Key, c.link.Attrs().Name, err)
		}
	}
	return keep, nil
}

// createHostChild creates the endpoint's child in the host namespace h under
// its hand-off name, the record first (as for any child). A refused child
// leaves no new record.
func (d *Driver) createHostChild(h *netlink.Handle, parent netlink.Link, want epRecord, had bool) (netlink.Link, error) {
	want.IfName, want.IfIndex = "", 0
	if err := d.recs.putEP(want); err != nil {
		return nil, fmt.Errorf("ensure endpoint %s: %w", want.Key, err)
	}
	alias := nl.Alias(d.kind, want.Fingerprint, want.Key)
	iv := &netlink.IPVlan{
		LinkAttrs: netlink.LinkAttrs{Name: core.HandOffIfName(want.Key), ParentIndex: parent.Attrs().Index, Alias: alias},
		Mode:      netlinkMode(want.Mode),
	}
	link, err := addChild(h, h, iv, parent, want.Key, alias)
	if err != nil {
		if !had {
			_ = d.recs.delEP(want.Key)
		}
		return nil, err
	}
	return link, nil
}

// recordChild records want with the handed-off child's name and index (in
// the host namespace or the sandbox), unless the record (rec, if had) says
// that already.
func (d *Driver) recordChild(want, rec epRecord, had bool, link netlink.Link) error {
	want.IfName, want.IfIndex = link.Attrs().Name, link.Attrs().Index
	if had && rec == want {
		return nil
	}
	if err := d.recs.putEP(want); err != nil {
		return fmt.Errorf("ensure endpoint %s: %w", want.Key, err)
	}
	return nil
}

// deleteHostChildren deletes the endpoint's children in the host namespace h:
// one waiting for Docker, or one Docker's Leave gave back.
func (d *Driver) deleteHostChildren(h *netlink.Handle, key string) error {
	kids, err := d.hostChildren(h, key)
	if err != nil {
		return fmt.Errorf("list host links: %w", err)
	}
	for _, c := range kids {
		if err := h.LinkDel(c.link); err != nil && !nl.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", c.link.Attrs().Name, err)
		}
	}
	return nil
}

// deleteInSandbox deletes the endpoint's children inside its sandbox, if that
// is bound.
func (d *Driver) deleteInSandbox(rec epRecord) error {
	ch, cns, gone, err := openSandbox(rec.NetNSPath)
	if gone || err != nil {
		return err
	}
	defer cns.Close()
	defer ch.Close()
	return d.deleteOurChildren(ch, rec)
}

// hostChildren lists the endpoint's children in the host namespace h: marked
// ones, and an unmarked ipvlan under the hand-off name that a crash left
// before marking it (with no fingerprint, so that it is never kept).
func (d *Driver) hostChildren(h *netlink.Handle, key string) ([]child, error) {
	links, err := nl.LinkList(h)
	if err != nil {
		return nil, err
	}
	var out []child
	for _, l := range links {
		f, ok := nl.ParseAlias(l.Attrs().Alias, d.kind, 2)
		_, iv := l.(*netlink.IPVlan)
		switch {
		case ok && f[1] == key:
			out = append(out, child{link: l, fp: f[0]})
		case iv && l.Attrs().Alias == "" && l.Attrs().Name == core.HandOffIfName(key):
			out = append(out, child{link: l})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].link.Attrs().Index < out[j].link.Attrs().Index })
	return out, nil
}

// openSandbox opens a Docker sandbox's namespace. gone reports that there is
// none at the path: not bound yet (Docker joins before the container starts),
// or destroyed. The path alone names the sandbox, so no ID is compared.
func openSandbox(path string) (*netlink.Handle, netns.NsHandle, bool, error) {
	h, ns, err := nl.InNS(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.EINVAL) {
		return nil, 0, true, nil // no file, or a file that is no namespace (yet, or any more)
	}
	return h, ns, false, err
}
