package state

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// TLSFiles are a client certificate, its key and the CA that signed the etcd
// servers. etcd runs with --client-cert-auth: without them nothing is readable.
type TLSFiles struct {
	CA   string `json:"cacert"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// IsZero reports whether no file is named.
func (f TLSFiles) IsZero() bool { return f == TLSFiles{} }

// Config loads the files. All three are needed: a CA alone would let a client
// verify the server but the server would still refuse it.
func (f TLSFiles) Config() (*tls.Config, error) {
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return nil, fmt.Errorf("etcd TLS needs all of --etcd-cacert, --etcd-cert and --etcd-key (have cacert=%q cert=%q key=%q)", f.CA, f.Cert, f.Key)
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("etcd client certificate %s / key %s: %w", f.Cert, f.Key, err)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("etcd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("etcd CA %s holds no PEM certificate", f.CA)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// ConnectOption adjusts Connect.
type ConnectOption func(*connectOpts)

type connectOpts struct {
	tls  TLSFiles
	dial func(ctx context.Context, addr string) (net.Conn, error)
}

// WithTLS makes Connect authenticate with a client certificate.
func WithTLS(f TLSFiles) ConnectOption { return func(o *connectOpts) { o.tls = f } }

// WithDialer makes Connect reach etcd through dial, e.g. from inside another
// network namespace (benchmarks and tests of a fleet in namespaces).
func WithDialer(dial func(ctx context.Context, addr string) (net.Conn, error)) ConnectOption {
	return func(o *connectOpts) { o.dial = dial }
}

// hostPort strips a URL scheme: etcd's client picks TLS from its config, and a
// user may write either form.
func hostPort(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		return u.Host
	}
	return endpoint
}

// LocalEtcd is what an agent running the embedded etcd publishes, readable by
// root only, so that root's netdcli (and a second agent on the same machine)
// finds which certificates open which address without being told.
type LocalEtcd struct {
	Endpoint string `json:"endpoint"`
	TLSFiles
	PID int `json:"pid"`
}

// DefaultRunDir holds what lives as long as the kernel's state: driver records
// and the local etcd publication.
const DefaultRunDir = "/run/netplugin"

func localDir(runDir string) string { return filepath.Join(runDir, "etcd") }

func localFile(runDir, endpoint string) string {
	return filepath.Join(localDir(runDir), strings.NewReplacer(":", "_", "/", "_", "[", "", "]", "").Replace(hostPort(endpoint))+".json")
}

// PublishLocal writes l under runDir (directory 0700, file 0600) and returns a
// function removing it again.
func PublishLocal(runDir string, l LocalEtcd) (func(), error) {
	dir := localDir(runDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("publish local etcd: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("publish local etcd: %w", err)
	}
	b, err := json.Marshal(l)
	if err != nil {
		return nil, err
	}
	path := localFile(runDir, l.Endpoint)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("publish local etcd: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("publish local etcd: %w", err)
	}
	return func() { _ = os.Remove(path) }, nil
}

// ResolveTLS returns the TLS files to reach endpoints: given ones win; else,
// for a single endpoint, what a local agent published for that address; else,
// when endpoints is the default address and exactly one local etcd is
// published (an agent with another --etcd-client-url), that one, whose
// endpoint then replaces the default. Nothing found is no error: the store may
// be a plain etcd, and Connect reports a refusal clearly.
func ResolveTLS(runDir string, endpoints []string, given TLSFiles) ([]string, TLSFiles) {
	if !given.IsZero() || len(endpoints) != 1 {
		return endpoints, given
	}
	if l, ok := readLocal(localFile(runDir, endpoints[0])); ok {
		return endpoints, l.TLSFiles
	}
	if hostPort(endpoints[0]) != hostPort(DefaultEndpoints[0]) {
		return endpoints, given
	}
	matches, _ := filepath.Glob(filepath.Join(localDir(runDir), "*.json"))
	var live []LocalEtcd
	for _, m := range matches {
		if l, ok := readLocal(m); ok && alive(l.PID) {
			live = append(live, l)
		}
	}
	if len(live) == 1 {
		return []string{live[0].Endpoint}, live[0].TLSFiles
	}
	return endpoints, given
}

func readLocal(path string) (LocalEtcd, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return LocalEtcd{}, false
	}
	var l LocalEtcd
	if json.Unmarshal(b, &l) != nil || l.Endpoint == "" {
		return LocalEtcd{}, false
	}
	return l, true
}

// alive reports whether pid names a running process; a publication left by a
// crash must not be picked as "the only one".
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return !errors.Is(err, os.ErrNotExist)
}

// probeTLS tells why a TLS-protected etcd refused us, or "" when that is not
// the problem: etcd's client waits for a ready connection until the deadline
// and reports only that, so the handshake is repeated here, once, to name the
// file the user must fix. tc is the client's config, nil for none.
func probeTLS(ctx context.Context, addr string, tc *tls.Config) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// Unverified: this handshake only learns whether the server speaks TLS.
	conf := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
	if tc != nil {
		conf = tc.Clone()
		conf.ServerName, _, _ = net.SplitHostPort(addr)
	}
	conn, err := (&tls.Dialer{Config: conf}).DialContext(ctx, "tcp", addr)
	if err != nil {
		var uae x509.UnknownAuthorityError
		var hne x509.HostnameError
		switch {
		case errors.As(err, &uae):
			return "its server certificate is not signed by the CA given with --etcd-cacert"
		case errors.As(err, &hne):
			return "its server certificate is not valid for " + addr
		case tc != nil && strings.Contains(err.Error(), "first record does not look like a TLS handshake"):
			return "it does not speak TLS, but TLS files were given"
		}
		return ""
	}
	defer conn.Close()
	if tc == nil {
		return "it requires a client certificate: give --etcd-cacert, --etcd-cert and --etcd-key (or NETPLUGIN_ETCD_CACERT, _CERT, _KEY)"
	}
	// TLS 1.3 reports a rejected client certificate only on the first read.
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil && strings.Contains(err.Error(), "remote error") {
		return "it does not accept our client certificate (" + strings.TrimPrefix(err.Error(), "remote error: tls: ") + "): is it signed by the etcd cluster's CA?"
	}
	return ""
}
