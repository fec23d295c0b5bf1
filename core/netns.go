package core

import (
	"fmt"
	"path/filepath"
	"strings"
)

// NetNSDir is where named network namespaces live (ip netns add NAME).
const NetNSDir = "/var/run/netns"

// NetNSPath turns what a user gave as -netns into the path to open: a name
// (no '/') under NetNSDir, or an absolute, clean path. A relative name never
// escapes NetNSDir. Whether the path is a namespace at all, and not the host's
// own, is checked by the agent when it opens it (it is the one with the
// privileges, and the file may not exist yet).
func NetNSPath(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: empty network namespace", ErrInvalid)
	}
	if !strings.Contains(s, "/") {
		if s == "." || s == ".." || !nameRE.MatchString(s) {
			return "", fmt.Errorf("%w: network namespace name %q: use letters, digits, '.', '_' or '-' (a name under %s), or an absolute path", ErrInvalid, s, NetNSDir)
		}
		return filepath.Join(NetNSDir, s), nil
	}
	if !filepath.IsAbs(s) || filepath.Clean(s) != s {
		return "", fmt.Errorf("%w: network namespace path %q: want a name under %s or an absolute path without '..', '.' or '//'", ErrInvalid, s, NetNSDir)
	}
	return s, nil
}
