// Package e2e holds netplugin's multi-host system tests. Each test brings up a
// fleet of namespace hosts with scripts/cluster (every host its own etcd
// member, OVS, dockerd and agent, on one underlay) or uses the one fleet shared
// by the tests that leave it as they found it, and proves what it claims by
// traffic between endpoints on different hosts, or by counting.
//
// The tests run only under `make e2e` (NETPLUGIN_E2E=1, as root); elsewhere,
// as in `make test`, they skip.
package e2e
