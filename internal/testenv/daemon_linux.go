package testenv

import "syscall"

// procAttr puts a daemon in its own process group and asks the kernel to
// send deathSig (if non-zero) when the forking thread dies; see spawn.
func procAttr(deathSig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig}
}

// unmount unmounts mp; detach makes a busy mount disappear from the tree
// now and be released when its last user goes.
func unmount(mp string, detach bool) error {
	flags := 0
	if detach {
		flags = syscall.MNT_DETACH
	}
	return syscall.Unmount(mp, flags)
}
