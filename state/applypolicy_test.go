package state_test

import (
	"context"
	"strings"
	"testing"

	"github.com/netplugin/netplugin/internal/etcdtest"
	"github.com/netplugin/netplugin/state"
)

// policyDoc is a -cfg document with tenant t1's networks n1 and mv
// (macvlan), and the policy objects given (JSON members of the tenant) and
// endpoints db1 and w1 of n1 in the groups given.
func policyDoc(objects, dbGroup, webGroup string) string {
	if objects != "" {
		objects = "," + objects
	}
	return `{"tenants":[{"name":"t1","networks":[
	  {"name":"n1","subnet":"10.74.0.0/24","endpoints":[{"name":"db1","host":"h1","group":"` + dbGroup + `"},{"name":"w1","host":"h2","group":"` + webGroup + `"}]},
	  {"name":"mv","driver":"macvlan","options":{"parent":"eth1"},"subnet":"10.74.1.0/24","endpoints":[]}]` + objects + `}]}`
}

const goodPolicyObjects = `
	"policies":[{"name":"db-in","rules":[{"name":"web-to-db","priority":10,"direction":"in","fromGroup":"web","protocol":"tcp","port":"5432","action":"allow"}]},
	            {"name":"deny-in","rules":[{"name":"d","priority":5,"direction":"in","action":"deny"}]}],
	"netprofiles":[{"name":"gold","bandwidthIn":"10mbit","burst":65536,"dscp":46}],
	"groups":[{"name":"web","network":"n1"},{"name":"db","network":"n1","policies":["db-in","deny-in"],"netprofile":"gold"}]`

// TestApplyPolicyDocument: policies, netprofiles, groups and endpoint groups
// in a -cfg document are applied with their indexes, applying it again
// changes nothing, every document that does not hold together is refused
// whole, and a document without them deletes them.
func TestApplyPolicyDocument(t *testing.T) {
	s, _ := etcdtest.Store(t)
	ctx := context.Background()
	sum, err := s.Apply(ctx, parse(t, policyDoc(goodPolicyObjects, "db", "web")), "")
	mustDo(t, err)
	if sum.Created < 9 {
		t.Fatalf("created %+v", sum)
	}
	g, _, err := s.GetGroup(ctx, "t1", "db")
	if err != nil || g.Profile != "gold" || len(g.Policies) != 2 {
		t.Fatalf("group db: %+v %v", g, err)
	}
	members, err := s.GroupMembers(ctx, "t1", "db")
	if err != nil || len(members) != 1 || members[0].Name != "db1" {
		t.Fatalf("members of db: %v %v", members, err)
	}
	checkStore(t, s)
	if err := s.DeleteGroup(ctx, "t1", "web"); err == nil || !strings.Contains(err.Error(), "used by") {
		t.Fatalf("the applied references are not in force: %v", err)
	}
	again, err := s.Apply(ctx, parse(t, policyDoc(goodPolicyObjects, "db", "web")), "")
	if err != nil || again.Created+again.Updated+again.Deleted != 0 {
		t.Fatalf("applying it again: %+v %v", again, err)
	}

	before := etcdtest.Dump(t, s)
	for name, doc := range map[string]string{
		"rule names an unknown group":    policyDoc(strings.Replace(goodPolicyObjects, `"fromGroup":"web"`, `"fromGroup":"nope"`, 1), "db", "web"),
		"rule names an unknown network":  policyDoc(strings.Replace(goodPolicyObjects, `"fromGroup":"web"`, `"fromNetwork":"nope"`, 1), "db", "web"),
		"port out of range":              policyDoc(strings.Replace(goodPolicyObjects, `"5432"`, `"65536"`, 1), "db", "web"),
		"group names an unknown policy":  policyDoc(strings.Replace(goodPolicyObjects, `["db-in","deny-in"]`, `["db-in","nope"]`, 1), "db", "web"),
		"group names an unknown profile": policyDoc(strings.Replace(goodPolicyObjects, `"netprofile":"gold"`, `"netprofile":"nope"`, 1), "db", "web"),
		"group of an unknown network":    policyDoc(strings.Replace(goodPolicyObjects, `{"name":"web","network":"n1"}`, `{"name":"web","network":"nope"}`, 1), "db", "web"),
		"policies of a group tie":        policyDoc(strings.Replace(goodPolicyObjects, `"priority":5`, `"priority":10`, 1), "db", "web"),
		"policed group on macvlan": policyDoc(strings.Replace(goodPolicyObjects, `{"name":"web","network":"n1"}`,
			`{"name":"web","network":"n1"},{"name":"mvg","network":"mv","policies":["deny-in"]}`, 1), "db", "web"),
		"endpoint in an unknown group":           policyDoc(goodPolicyObjects, "nope", "web"),
		"endpoint in a group of another network": policyDoc(strings.Replace(goodPolicyObjects, `{"name":"web","network":"n1"}`, `{"name":"web","network":"n1"},{"name":"mvg","network":"mv"}`, 1), "mvg", "web"),
		"bad profile":                            policyDoc(strings.Replace(goodPolicyObjects, `"dscp":46`, `"dscp":64`, 1), "db", "web"),
		"endpoint group without groups":          policyDoc("", "db", ""),
	} {
		d, err := parseDoc(doc)
		if err == nil {
			_, err = s.Apply(ctx, d, "")
		}
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got %v, want a one-line error", name, err)
		}
		if etcdtest.Dump(t, s) != before {
			t.Fatalf("%s: the refused document changed the store", name)
		}
	}

	// Without them, they go; the endpoints leave their groups.
	_, err = s.Apply(ctx, parse(t, policyDoc("", "", "")), "")
	mustDo(t, err)
	checkStore(t, s)
	if d := etcdtest.Dump(t, s); strings.Contains(d, "/index/uses/") || strings.Contains(d, "/index/group/") || strings.Contains(d, "/config/policies/") ||
		strings.Contains(d, "/config/groups/") || strings.Contains(d, "/config/profiles/") {
		t.Fatalf("policy objects left:\n%s", d)
	}
}

func parseDoc(js string) (state.Document, error) { return state.ParseDocument(strings.NewReader(js)) }
