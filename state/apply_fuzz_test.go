package state_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// FuzzApplyDocument applies documents to a real etcd that also holds what
// Docker made: a refused document changes nothing, an accepted one leaves a
// consistent store that a second apply does not touch, and Docker's objects
// survive every document.
func FuzzApplyDocument(f *testing.F) {
	for _, d := range []string{
		`{"tenants":[]}`,
		`{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.5.0.0/24","gateway":"10.5.0.1","tag":50,
		  "endpoints":[{"name":"a","netns":"nsa"},{"name":"b","ip":"10.5.0.9"},{"name":"c","container":"web1","host":"h2"}]}]}]}`,
		`{"global":{"vlans":"100-200"},"tenants":[{"name":"default","networks":[{"name":"n","endpoints":[{"name":"x"}]},
		  {"name":"r","driver":"ipvlan","subnet":"10.8.0.0/24","options":{"mode":"l3"},"endpoints":[{"name":"m","host":"h2"}]}]}]}`,
		`{"tenants":[{"name":"default","networks":[{"name":"docker-d0c000000000","endpoints":[{"name":"c1"},{"name":"new"}]}]}]}`,
		`{"tenants":[{"name":"blue","networks":[{"name":"web","subnet":"10.5.0.0/24","endpoints":[{"name":"a","ip":"10.5.0.300"}]}]}]}`,
		`{"tenants":[{"name":"blue","networks":[{"name":"x","tag":9},{"name":"y","tag":9}]}]}`,
	} {
		f.Add([]byte(d))
	}
	s, _ := etcdtest.Store(f)
	ctx := context.Background()
	dockerNetwork(f, s, "d0c0000000000000000000000000000000000000000000000000000000000000", core.Network{Subnet: "10.20.0.0/24"}, "c1")
	dockerNetwork(f, s, "d0c0000000000000000000000000000000000000000000000000000000000001", core.Network{Tenant: "blue", Subnet: "10.20.1.0/24"}, "c2")
	o := state.ApplyOptions{DefaultHost: "h1"}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := state.ParseDocument(bytes.NewReader(b))
		if err != nil {
			return
		}
		before := etcdtest.Dump(t, s)
		if _, err := s.ApplyWith(ctx, d, o); err != nil {
			if errors.Is(err, core.ErrUnavailable) {
				t.Fatal(err)
			}
			if etcdtest.Dump(t, s) != before {
				t.Fatalf("refused document (%v) changed the store", err)
			}
			return
		}
		rev := revision(t, s)
		sum, err := s.ApplyWith(ctx, d, o)
		if err != nil || sum.Created+sum.Updated+sum.Deleted != 0 || revision(t, s) != rev {
			t.Fatalf("second apply: %+v %v", sum, err)
		}
		eps := checkConsistent(t, s)
		for _, k := range []string{"default/c1", "blue/c2"} {
			if eps[k].DockerEndpoint == "" {
				t.Fatalf("Docker's endpoint %s is gone", k)
			}
		}
	})
}
