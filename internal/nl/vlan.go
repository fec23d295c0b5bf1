package nl

// Links created under a mark, and 802.1Q subinterfaces: first needed by the
// macvlan driver (-opt vlan=ID), then by the linuxbridge driver (VLAN networks
// on --uplink, VXLAN devices).

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netplugin/netplugin/core"
)

// maxIfName is the longest interface name Linux accepts (IFNAMSIZ - 1).
const maxIfName = 15

// handle is h, or for nil the package's own handle: a zero Handle opens a
// socket per request in the caller's namespace, as netlink's package-level
// functions do.
func handle(h *netlink.Handle) *netlink.Handle {
	if h == nil {
		return &netlink.Handle{}
	}
	return h
}

// VLANName is the name of parent's 802.1Q subinterface for id: "<parent>.<id>"
// as an operator would name it, or "npv" and a digest when that does not fit
// in 15 bytes.
func VLANName(parent string, id int) string {
	name := parent + "." + strconv.Itoa(id)
	if len(name) > maxIfName {
		return core.LinkPrefix + "v" + core.Short(name)
	}
	return name
}

// AddMarked creates link in the namespace of h (nil: the caller's) under a
// temporary name of ours, marks it with alias and renames it to the name in
// its attributes: the kernel ignores an alias given at creation, and a crash
// in between must not leave an unmarked link under the final name, which
// would look like someone else's and never be cleaned up. The created link is
// returned as the kernel reports it.
func AddMarked(h *netlink.Handle, link netlink.Link, alias string) (netlink.Link, error) {
	h = handle(h)
	name := link.Attrs().Name
	tmp := core.LinkPrefix + "t" + core.Short(name)
	if old, err := h.LinkByName(tmp); err == nil { // a crash's leftover: ours by name
		if err := h.LinkDel(old); err != nil && !IsNotFound(err) {
			return nil, fmt.Errorf("delete leftover %s: %w", tmp, err)
		}
	}
	link.Attrs().Name = tmp
	defer func() { link.Attrs().Name = name }()
	if err := h.LinkAdd(link); err != nil {
		return nil, err
	}
	made, err := h.LinkByName(tmp)
	if err == nil {
		err = h.LinkSetAlias(made, alias)
	}
	if err == nil {
		err = h.LinkSetName(made, name)
	}
	if err == nil {
		made, err = h.LinkByName(name)
	}
	if err != nil {
		if made != nil {
			_ = h.LinkDel(made) // by index, whatever its name is by now
		} else {
			_ = h.LinkDel(link)
		}
		return nil, fmt.Errorf("mark and name %s: %w", name, err)
	}
	return made, nil
}

// CreateVLAN creates the subinterface name (VLAN id on parent), marked with
// alias (see AddMarked). A kernel without 802.1Q support gets an error naming
// CONFIG_VLAN_8021Q.
func CreateVLAN(h *netlink.Handle, parent netlink.Link, id int, name, alias string) (netlink.Link, error) {
	v := &netlink.Vlan{VlanId: id, LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parent.Attrs().Index}}
	link, err := AddMarked(h, v, alias)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return nil, fmt.Errorf("create 802.1Q subinterface %s: this kernel has no 802.1Q VLAN support "+
			"(CONFIG_VLAN_8021Q; try modprobe 8021q): %w", name, err)
	case errors.Is(err, unix.EEXIST):
		return nil, fmt.Errorf("%w: VLAN %d already exists on %s under another name; name it %s or remove it",
			core.ErrInUse, id, parent.Attrs().Name, name)
	case err != nil:
		return nil, fmt.Errorf("create 802.1Q subinterface %s: %w", name, err)
	}
	return link, nil
}
