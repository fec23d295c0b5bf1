// Package mgmtfn will hold the Docker CNM remote network and IPAM drivers that
// translate Docker's calls into netplugin's desired state.
package mgmtfn
