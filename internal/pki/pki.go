// Package pki makes the certificates that close a lone host's embedded etcd to
// everyone but root: a private CA, a server certificate for the etcd listeners
// and one client certificate, all under a directory only root can read. A
// fleet brings its own PKI (scripts/provision/tls.sh); this is the zero-setup
// single-host case.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Files are the paths of a local PKI.
type Files struct {
	CA, CAKey          string
	ServerCert, Server string // certificate and key of the etcd listeners
	ClientCert, Client string // certificate and key of local clients (the agent, netdcli as root)
}

func layout(dir string) Files {
	p := func(n string) string { return filepath.Join(dir, n) }
	return Files{CA: p("ca.crt"), CAKey: p("ca.key"), ServerCert: p("server.crt"), Server: p("server.key"),
		ClientCert: p("client.crt"), Client: p("client.key")}
}

// validity of every certificate: a local CA nobody else trusts gains nothing
// from expiring, and an expired one would lock the host out of its own store.
const validity = 20 * 365 * 24 * time.Hour

// EnsureLocal makes, on first use, a CA, a server certificate valid for hosts
// (IP addresses or names; 127.0.0.1, ::1 and localhost always) and a client
// certificate with common name clientCN, in dir. Existing files are kept; the
// server certificate alone is reissued when it does not cover every host (the
// agent was given another --etcd-client-url). dir and every key are 0700/0600.
func EnsureLocal(dir string, hosts []string, clientCN string) (Files, error) {
	f := layout(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, fmt.Errorf("pki dir: %w", err)
	}
	// A directory made earlier with a looser mode is tightened, never trusted.
	if err := os.Chmod(dir, 0o700); err != nil {
		return f, fmt.Errorf("pki dir: %w", err)
	}
	ca, caKey, err := loadPair(f.CA, f.CAKey)
	if errors.Is(err, os.ErrNotExist) {
		ca, caKey, err = newCA(f)
	}
	if err != nil {
		return f, fmt.Errorf("local CA in %s: %w", dir, err)
	}
	want := append([]string{"127.0.0.1", "::1", "localhost"}, hosts...)
	srv, _, err := loadPair(f.ServerCert, f.Server)
	if err != nil || !covers(srv, want) || srv.CheckSignatureFrom(ca) != nil {
		if err := issue(f.ServerCert, f.Server, ca, caKey, "netplugin-etcd", want); err != nil {
			return f, fmt.Errorf("server certificate in %s: %w", dir, err)
		}
	}
	cli, _, err := loadPair(f.ClientCert, f.Client)
	if err != nil || cli.Subject.CommonName != clientCN || cli.CheckSignatureFrom(ca) != nil {
		if err := issue(f.ClientCert, f.Client, ca, caKey, clientCN, nil); err != nil {
			return f, fmt.Errorf("client certificate in %s: %w", dir, err)
		}
	}
	return f, nil
}

func covers(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(c.IPAddresses, ip.Equal) {
				return false
			}
		} else if !slices.Contains(c.DNSNames, h) {
			return false
		}
	}
	return true
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func newCA(f Files) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: "netplugin local CA " + host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validity),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := write(f.CA, f.CAKey, der, key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// issue writes a certificate usable both as server and as client: etcd's peer
// listener authenticates its own member with the server certificate.
func issue(certPath, keyPath string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, hosts []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return write(certPath, keyPath, der, key)
}

// write stores a pair root-only; each file is renamed into place so a crash
// never leaves half a key.
func write(certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})); err != nil {
		return err
	}
	return writeFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func writeFile(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes 0600 files whatever the umask; Chmod makes sure.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func loadPair(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, nil, fmt.Errorf("%s or %s is not PEM", certPath, keyPath)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	return cert, key, nil
}
