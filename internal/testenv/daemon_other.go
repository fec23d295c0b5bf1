//go:build !linux

package testenv

import (
	"errors"
	"syscall"
)

// Private daemons are Linux-only (ensurePrereqs skips elsewhere); these
// stubs only keep the package compiling for editors and vet on other
// systems.

func procAttr(syscall.Signal) *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func unmount(string, bool) error { return errors.New("unmount: not supported on this system") }
