package pki

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestEnsureLocal: made once, root-only, kept on the next start, and only the
// server certificate is reissued when an address is added.
func TestEnsureLocal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	old := syscall.Umask(0) // whatever the umask, keys stay private
	defer syscall.Umask(old)
	f, err := EnsureLocal(dir, nil, "root")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, f.CAKey, f.Server, f.Client, f.CA, f.ServerCert, f.ClientCert} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v", p, st.Mode().Perm())
		}
	}
	ca, srv, cli := readCert(t, f.CA), readCert(t, f.ServerCert), readCert(t, f.ClientCert)
	if srv.CheckSignatureFrom(ca) != nil || cli.CheckSignatureFrom(ca) != nil || cli.Subject.CommonName != "root" {
		t.Fatal("certificates not signed by the CA, or wrong CN")
	}
	if _, err := EnsureLocal(dir, nil, "root"); err != nil {
		t.Fatal(err)
	}
	if !readCert(t, f.ServerCert).Equal(srv) || !readCert(t, f.CA).Equal(ca) {
		t.Fatal("a second start replaced certificates it should keep")
	}
	if _, err := EnsureLocal(dir, []string{"10.1.2.3"}, "root"); err != nil {
		t.Fatal(err)
	}
	srv2 := readCert(t, f.ServerCert)
	if srv2.Equal(srv) || !slices.ContainsFunc(srv2.IPAddresses, func(ip net.IP) bool { return ip.String() == "10.1.2.3" }) {
		t.Fatal("server certificate not reissued for the new address")
	}
	if !readCert(t, f.CA).Equal(ca) || !readCert(t, f.ClientCert).Equal(cli) {
		t.Fatal("CA or client certificate changed with the server's")
	}
}
