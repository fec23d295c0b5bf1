package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/nstest"
)

// TestWrongCertificateRefused (system test 9): the cluster's etcd refuses a
// client without a certificate, with a certificate from another CA, and
// without TLS, and netdcli refuses a cluster whose certificate another CA
// signed: each with one clear line, within netdcli's timeout, and nothing
// written. The host's own certificate works.
func TestWrongCertificateRefused(t *testing.T) {
	c := sharedCluster(t)
	p := nstest.Prefix()
	other := t.TempDir()
	for _, args := range [][]string{{"ca", "--dir", other}, {"client", "--dir", other, "--name", "h1"}} {
		if out, err := exec.Command(filepath.Join(repo, "scripts", "provision", "tls.sh"), args...).CombinedOutput(); err != nil {
			t.Fatalf("tls.sh %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	before := c.dump(t, "h1")
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"no client certificate", []string{"NETPLUGIN_ETCD_CACERT=", "NETPLUGIN_ETCD_CERT=", "NETPLUGIN_ETCD_KEY="},
			"requires a client certificate"},
		{"half the TLS files", []string{"NETPLUGIN_ETCD_CERT=", "NETPLUGIN_ETCD_KEY="},
			"etcd TLS needs all of --etcd-cacert, --etcd-cert and --etcd-key"},
		{"client certificate of another CA", []string{"NETPLUGIN_ETCD_CERT=" + other + "/h1/client.pem", "NETPLUGIN_ETCD_KEY=" + other + "/h1/client.key"},
			"does not accept our client certificate"},
		{"cluster signed by another CA", []string{"NETPLUGIN_ETCD_CACERT=" + other + "/ca.pem"},
			"not signed by the CA"},
		{"no TLS", []string{"NETPLUGIN_ETCD=http://172.30.0.1:2379", "NETPLUGIN_ETCD_CACERT=", "NETPLUGIN_ETCD_CERT=", "NETPLUGIN_ETCD_KEY="},
			"refused the connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			args := append(append([]string{"env"}, tc.env...), "netdcli", "-oper", "create", "-construct", "tenant", p)
			out, err := c.tryExec("h1", args...)
			took := time.Since(start)
			if err == nil {
				t.Fatalf("accepted: %s", out)
			}
			msg := err.Error()
			if i := strings.Index(msg, "netdcli: "); i >= 0 {
				msg = msg[i:]
			}
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
				t.Fatalf("want one line saying %q, got %q", tc.want, msg)
			}
			if took > 3*time.Second+3*time.Second {
				t.Fatalf("refused after %v", took)
			}
			t.Logf("%s (%v)", msg, took.Round(10*time.Millisecond))
		})
	}
	// Not only our client: etcd itself refuses a client without a certificate.
	if out, err := c.tryExec("h1", "env", "-u", "ETCDCTL_CERT", "-u", "ETCDCTL_KEY", "etcdctl", "put", "/netplugin/v1/config/x", "y"); err == nil {
		t.Fatalf("etcdctl without a client certificate wrote: %s", out)
	}
	if after := c.dump(t, "h1"); after != before {
		t.Fatalf("refused clients changed the store:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	c.netdcli(t, "h1", "-oper", "create", "-construct", "tenant", p)
	c.netdcli(t, "h1", "-oper", "delete", "-construct", "tenant", p)
}

// TestDuplicateHostLabelRefused (system test 9): a second agent claiming h1's
// label — on h2, with h1's own certificate, as a cloned machine would — is
// refused with one clear line and exits; h1's agent keeps its registration
// and stays healthy.
func TestDuplicateHostLabelRefused(t *testing.T) {
	requireE2E(t)
	c := sharedCluster(t)
	record := c.exec(t, "h1", "etcdctl", "get", "/netplugin/v1/hosts/h1")
	state := t.TempDir()
	pki := filepath.Join(c.dir, "pki", "h1")
	start := time.Now()
	out, err := c.tryExec("h2", "timeout", "60", filepath.Join(c.dir, "bin", "netplugin"), "--host-label", "h1",
		"--etcd-endpoints", "https://172.30.0.2:2379,https://172.30.0.1:2379,https://172.30.0.3:2379",
		"--etcd-cacert", pki+"/ca.pem", "--etcd-cert", pki+"/client.pem", "--etcd-key", pki+"/client.key",
		"--data-dir", state+"/data", "--run-dir", state+"/run", "--listen", "127.0.0.1:9191", "--docker-plugin", "",
		"--drivers", "linuxbridge")
	if err == nil || strings.Contains(err.Error(), "exit status 124") {
		t.Fatalf("the second agent labelled h1 was not refused (ran %v): %v %s", time.Since(start), err, out)
	}
	last := strings.TrimSpace(err.Error())
	if i := strings.LastIndex(last, "netplugin: "); i >= 0 {
		last = last[i:]
	}
	if !strings.Contains(last, "h1") || strings.Contains(last, "\n") {
		t.Fatalf("want one line naming h1, got %q", last)
	}
	t.Logf("refused after %v: %s", time.Since(start).Round(10*time.Millisecond), last)
	if got := c.exec(t, "h1", "etcdctl", "get", "/netplugin/v1/hosts/h1"); got != record {
		t.Fatalf("h1's registration changed:\nbefore: %s\nafter: %s", record, got)
	}
	if code := c.healthz("h1"); code != 200 {
		t.Fatalf("h1's agent /healthz %d after the refused duplicate", code)
	}
}
