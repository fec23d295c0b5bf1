package state_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// TestConcurrentCreatesWithTag runs the seed's `-tag N` on endpoint create from
// 8 clients at once: a lost race for an IP (or for the re-tag of an auto-tagged
// network) is retried, never reported as the tag being taken.
func TestConcurrentCreatesWithTag(t *testing.T) {
	for _, tc := range []struct {
		name string
		net  core.Network
	}{
		{"tag set by the user", core.Network{Name: "n", Subnet: "10.2.0.0/23", Tag: 77}},
		{"auto tag re-tagged by the first create", core.Network{Name: "n", Subnet: "10.2.0.0/23"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, e := etcdtest.Store(t)
			ctx := context.Background()
			if _, err := s.CreateNetwork(ctx, tc.net); err != nil {
				t.Fatal(err)
			}
			const workers, each = 8, 25
			var wg sync.WaitGroup
			errs := make(chan error, workers*each)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := state.Connect(ctx, []string{e.Endpoint()}, 10*time.Second, etcdtest.Log(t))
					if err != nil {
						errs <- err
						return
					}
					defer c.Close()
					for i := 0; i < each; i++ {
						if _, err := c.CreateEndpoint(ctx, core.Endpoint{Network: "n", Name: fmt.Sprintf("w%d-e%d", w, i)}, 77); err != nil {
							errs <- err
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			n, _, err := s.GetNetwork(ctx, "default", "n")
			if err != nil || n.Tag != 77 || n.TagAuto {
				t.Fatalf("network %+v, %v: want tag 77 set by the user", n, err)
			}
			eps, err := s.Endpoints(ctx, "default", "n")
			if err != nil {
				t.Fatal(err)
			}
			ips := map[string]bool{}
			for _, ep := range eps {
				ips[ep.IP] = true
			}
			if len(eps) != workers*each || len(ips) != workers*each {
				t.Fatalf("%d endpoints with %d distinct IPs, want %d", len(eps), len(ips), workers*each)
			}
		})
	}
}

// TestRetagRefusals: -tag on endpoint create explains which precondition of the
// re-tag failed, and changes nothing.
func TestRetagRefusals(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "a", Subnet: "10.2.0.0/24", Tag: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateNetwork(ctx, core.Network{Name: "b", Subnet: "10.2.1.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "b", Name: "b1"}, 0); err != nil {
		t.Fatal(err)
	}
	before := etcdtest.Dump(t, s)
	for _, c := range []struct {
		tag  int
		want string
	}{
		{100, "vlan tag 100 is taken by network default/a"},
		{200, "network default/b already has endpoints, so its tag cannot change"},
	} {
		_, err := s.CreateEndpoint(ctx, core.Endpoint{Network: "b", Name: "b2"}, c.tag)
		if !errors.Is(err, core.ErrInUse) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("-tag %d: got %v, want %q", c.tag, err, c.want)
		}
		if etcdtest.Dump(t, s) != before {
			t.Fatalf("-tag %d changed the store", c.tag)
		}
	}
}
