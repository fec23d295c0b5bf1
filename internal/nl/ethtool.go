package nl

// Transmit checksum offload, first needed by the OVS driver: its userspace
// datapath's conntrack checks TCP and UDP checksums, and a veth whose sender
// leaves them to "hardware" hands it packets whose checksum is not filled in
// yet, which conntrack calls invalid. Turning offload off on the container's
// end makes the kernel fill them in.

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ifreqPtr is struct ifreq with its union holding a pointer (ifr_data).
type ifreqPtr struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte
}

type ethtoolValue struct{ cmd, data uint32 }

// SetTxChecksum turns transmit checksum offload of link name in namespace ns
// on or off (ethtool -K name tx on|off).
func SetTxChecksum(ns netns.NsHandle, name string, on bool) error {
	fd, err := socketIn(ns)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	v := ethtoolValue{cmd: unix.ETHTOOL_STXCSUM}
	if on {
		v.data = 1
	}
	var ifr ifreqPtr
	copy(ifr.name[:unix.IFNAMSIZ-1], name)
	ifr.data = unsafe.Pointer(&v)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("ethtool -K %s tx %v: %w", name, on, errno)
	}
	runtime.KeepAlive(&v)
	return nil
}

// socketIn opens a datagram socket inside ns (an ioctl acts on the links of
// the socket's namespace).
func socketIn(ns netns.NsHandle) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return -1, fmt.Errorf("own netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		return -1, fmt.Errorf("enter netns: %w", err)
	}
	fd, serr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // never let a thread in the wrong namespace run other goroutines
		if serr == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("leave netns: %w", err)
	}
	if serr != nil {
		return -1, fmt.Errorf("socket: %w", serr)
	}
	return fd, nil
}
