package core

import (
	"errors"
	"testing"
)

func TestNetNSPath(t *testing.T) {
	good := map[string]string{
		"ns1":                 "/var/run/netns/ns1",
		"a.b-c_d":             "/var/run/netns/a.b-c_d",
		"/var/run/netns/x":    "/var/run/netns/x",
		"/proc/123/ns/net":    "/proc/123/ns/net",
		"/run/docker/netns/a": "/run/docker/netns/a",
	}
	for in, want := range good {
		got, err := NetNSPath(in)
		if err != nil || got != want {
			t.Errorf("NetNSPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "x/../../etc", "/var/run/netns/../../../proc/1/ns/net",
		"relative/path", "/a//b", "/a/./b", "/a/", "-x", "a b"} {
		if _, err := NetNSPath(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("NetNSPath(%q): want ErrInvalid, got %v", bad, err)
		}
	}
}
