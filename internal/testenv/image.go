package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// ensureImage imports Image unless the daemon already has it. No registry
// is reachable, so the image is a tar of a tiny rootfs fed to
// `docker import`.
func (d *Docker) ensureImage(ctx context.Context) error {
	if _, err := d.run(ctx, nil, "image", "inspect", "--format", "{{.Id}}", d.Image); err == nil {
		return nil
	}
	bb, reason := findStaticBusybox()
	if reason != "" {
		return fmt.Errorf("cannot build %s: %s", d.Image, reason)
	}
	rootfs, err := busyboxRootfs(ctx, bb)
	if err != nil {
		return fmt.Errorf("building %s rootfs: %w", d.Image, err)
	}
	// Concurrent imports of the same tag (parallel packages sharing one
	// daemon) are harmless: the last one wins the tag, and containers keep
	// the image they were created from.
	if _, err := d.run(ctx, rootfs, "import", "--change", `CMD ["/bin/sh"]`, "-", d.Image); err != nil {
		return fmt.Errorf("importing %s: %w", d.Image, err)
	}
	return nil
}

// findStaticBusybox returns the path of a statically linked busybox, or why
// there is none. The image has no libc, so a dynamically linked busybox
// (Debian's "busybox" package, which conflicts with "busybox-static") would
// import fine and then fail in every container with "no such file".
func findStaticBusybox() (path, reason string) {
	p, err := lookBin("busybox")
	if err != nil {
		return "", "busybox-static not installed: apt-get install busybox-static"
	}
	f, err := elf.Open(p)
	if err != nil {
		return "", fmt.Sprintf("%s is not an ELF binary (%v): apt-get install busybox-static", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", p + " is dynamically linked: apt-get install busybox-static"
		}
	}
	return p, ""
}

// busyboxRootfs returns a tar of a rootfs with /bin/busybox and a symlink
// for every applet it has (sh, sleep, ip, ping, nc, ifconfig, route, ...).
// Timestamps are fixed so every import yields the same layer.
func busyboxRootfs(ctx context.Context, busybox string) ([]byte, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	list, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) error {
		h.ModTime, h.Uname, h.Gname = mtime, "root", "root"
		if body != nil {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	dir := func(name string, mode int64) error {
		return add(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}, nil)
	}
	file := func(name string, mode int64, body string) error {
		return add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, []byte(body))
	}
	link := func(name, target string) error {
		return add(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}, nil)
	}

	for _, d := range []string{"bin", "dev", "etc", "proc", "root", "run", "sys", "usr", "var"} {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := dir("tmp", 0o1777); err != nil {
		return nil, err
	}
	steps := []error{
		add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, bin),
		// Scripts written for other distributions call /sbin/ip or
		// /usr/bin/nc; point those directories at /bin.
		link("sbin", "bin"),
		link("usr/bin", "../bin"),
		link("usr/sbin", "../bin"),
		file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
		file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n"),
	}
	for _, err := range steps {
		if err != nil {
			return nil, err
		}
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := link("bin/"+applet, "busybox"); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
