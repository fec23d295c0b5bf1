package nl

// Token-bucket shapers, as the CNI bandwidth plugin makes them (this kernel
// has no tc policing): used by the linuxbridge driver on veths and ifb
// devices, and by the OVS driver on its ports' veths. Ours carry the handle
// TbfHandle, so that a root qdisc of anyone else is never replaced or removed.

import (
	"errors"
	"fmt"
	"math"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TbfHandle is the handle of our root tbf qdiscs ("np":0).
var TbfHandle = netlink.MakeHandle(0x6e70, 0)

// tbfLatency bounds how long a packet may wait in a tbf (the CNI bandwidth
// plugin's choice): the queue holds rate x latency + burst bytes.
const tbfLatency = 0.025

// Tbf is the root tbf of ours shaping link index to rate bits/s with burst bytes.
func Tbf(link int, rate, burst uint64) *netlink.Tbf {
	bytes := rate / 8
	// Xmittime counts microseconds in 32 bits: keep the burst under an hour of the rate.
	burst = min(burst, bytes*3600)
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link, Handle: TbfHandle, Parent: netlink.HANDLE_ROOT},
		Rate:       bytes,
		Buffer:     netlink.Xmittime(bytes, uint32(min(burst, math.MaxUint32))),
		Limit:      uint32(min(float64(bytes)*tbfLatency+float64(burst), math.MaxUint32)),
	}
}

// SetTbf gives link (in the namespace of h; nil: the caller's) our root tbf
// at rate and burst, or with rate 0 removes ours. A tbf already as wanted
// is left alone (replacing one refills its bucket); a root qdisc that is
// not ours is an error when a rate is wanted and left alone otherwise.
func SetTbf(h *netlink.Handle, link netlink.Link, rate, burst uint64) error {
	h = handle(h)
	qs, err := h.QdiscList(link)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", link.Attrs().Name, err)
	}
	var root netlink.Qdisc
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			root = q
		}
	}
	ours := root != nil && root.Attrs().Handle == TbfHandle
	if rate == 0 {
		if ours {
			if err := h.QdiscDel(root); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("remove shaper of %s: %w", link.Attrs().Name, err)
			}
		}
		return nil
	}
	want := Tbf(link.Attrs().Index, rate, burst)
	if t, ok := root.(*netlink.Tbf); ok && ours && t.Rate == want.Rate && t.Buffer == want.Buffer && t.Limit == want.Limit {
		return nil
	}
	if root != nil && !ours && root.Type() != "noqueue" && root.Type() != "pfifo_fast" && root.Type() != "fq_codel" && root.Type() != "mq" {
		return fmt.Errorf("link %s has a root qdisc %s that is not netplugin's; not replacing it", link.Attrs().Name, root.Type())
	}
	if err := h.QdiscReplace(want); err != nil {
		return fmt.Errorf("shape %s: %w", link.Attrs().Name, err)
	}
	return nil
}
