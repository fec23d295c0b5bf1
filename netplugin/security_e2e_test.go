package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netplugin/netplugin/internal/nstest"
	"github.com/netplugin/netplugin/internal/pki"
	"github.com/netplugin/netplugin/state"
)

// asNobody runs a command as user nobody, as an unprivileged local user would.
func asNobody(name string, args ...string) (string, error) {
	out, err := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--", name}, args...)...).CombinedOutput()
	return string(out), err
}

// TestEmbeddedEtcdClosedToLocalUsers: the embedded etcd a lone netplugin runs
// requires a client certificate that only root can read. root's netdcli finds
// it without flags (also on a non-default address); user nobody can neither
// read nor write, by gRPC (netdcli) or raw HTTP (the gateway), and a
// certificate of another CA is refused with one clear line.
func TestEmbeddedEtcdClosedToLocalUsers(t *testing.T) {
	nstest.RequireRoot(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	p := nstest.Prefix()
	data := t.TempDir()
	d := newDaemon(t, p+"-host", "--data-dir", data)
	d.start()
	key := state.Prefix + "config/tenants/" + p
	d.netdcli("-oper", "create", "-construct", "tenant", p) // no TLS flags: found from the publication

	// Files: every key and the publication are root's alone.
	for _, f := range []string{"pki", "pki/ca.key", "pki/server.key", "pki/client.key", "pki/client.crt"} {
		st, err := os.Stat(filepath.Join(data, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: others can read it", f, st.Mode().Perm())
		}
	}
	if st, err := os.Stat(filepath.Join(state.DefaultRunDir, "etcd")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("publication dir: %v %v", st.Mode(), err)
	}

	// nobody's netdcli (gRPC): refused, one line, nothing read.
	cliDir := t.TempDir()
	_ = os.Chmod(cliDir, 0o755)
	cli := filepath.Join(cliDir, "netdcli")
	if out, err := exec.Command("cp", filepath.Join(bins, "netdcli"), cli).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	out, err := asNobody(cli, "-etcd-url", d.etcdURL, "-oper", "get", "-construct", "tenant")
	if err == nil || strings.Contains(out, p) {
		t.Fatalf("nobody's netdcli read the store: %v\n%s", err, out)
	}
	if lines := strings.Count(strings.TrimSpace(out), "\n"); lines != 0 || !strings.Contains(out, "client certificate") {
		t.Errorf("nobody's netdcli: want one line naming the client certificate, got %q", out)
	}
	// nobody pointing at root's files: cannot read them.
	out, err = asNobody(cli, "-etcd-url", d.etcdURL, "-etcd-cacert", filepath.Join(data, "pki/ca.crt"),
		"-etcd-cert", filepath.Join(data, "pki/client.crt"), "-etcd-key", filepath.Join(data, "pki/client.key"),
		"-oper", "create", "-construct", "tenant", p+"-nobody")
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("nobody with root's file names: %v %q", err, out)
	}

	// Raw HTTP to the gRPC gateway, plain and TLS without a certificate, reads
	// and writes nothing.
	hp := strings.TrimPrefix(d.etcdURL, "https://")
	b64 := func(s string) string {
		out, _ := exec.Command("sh", "-c", "printf %s '"+s+"' | base64 -w0").Output()
		return string(out)
	}
	for _, url := range []string{"http://" + hp, "https://" + hp} {
		for _, req := range []string{`{"key":"` + b64(key) + `"}`, `{"key":"` + b64(key+"-x") + `","value":"eA=="}`} {
			for _, path := range []string{"/v3/kv/range", "/v3/kv/put"} {
				out, err := asNobody("curl", "-sk", "--max-time", "5", "-X", "POST", url+path, "-d", req)
				if err == nil && strings.Contains(out, `"kvs"`) || strings.Contains(out, `"header"`) {
					t.Errorf("nobody got an answer from %s%s: %s", url, path, out)
				}
			}
		}
	}
	if out := d.netdcli("-oper", "get", "-construct", "tenant"); strings.Contains(out, p+"-x") || strings.Contains(out, p+"-nobody") {
		t.Errorf("nobody wrote: %s", out)
	}

	// A certificate from another CA is refused with one clear line.
	other, err := pki.EnsureLocal(t.TempDir(), nil, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bins, "netdcli"), "-etcd-url", d.etcdURL, "-etcd-cacert", other.CA,
		"-etcd-cert", other.ClientCert, "-etcd-key", other.Client, "-oper", "get", "-construct", "tenant")
	b, err := cmd.CombinedOutput()
	if err == nil || strings.Count(strings.TrimSpace(string(b)), "\n") != 0 || !strings.Contains(string(b), "certificate") {
		t.Errorf("other CA: want a one-line refusal naming the certificate, got %v %q", err, b)
	}
	t.Logf("other CA refused: %s", strings.TrimSpace(string(b)))
	// The right CA, but a client certificate it did not sign.
	cmd = exec.Command(filepath.Join(bins, "netdcli"), "-etcd-url", d.etcdURL, "-etcd-cacert", filepath.Join(data, "pki/ca.crt"),
		"-etcd-cert", other.ClientCert, "-etcd-key", other.Client, "-oper", "get", "-construct", "tenant")
	b, err = cmd.CombinedOutput()
	if err == nil || strings.Count(strings.TrimSpace(string(b)), "\n") != 0 || !strings.Contains(string(b), "client certificate") {
		t.Errorf("foreign client certificate: want a one-line refusal, got %v %q", err, b)
	}
	t.Logf("foreign client certificate refused: %s", strings.TrimSpace(string(b)))
}

// TestEmbeddedEtcdRefusesPlainHTTP: asking the embedded etcd to listen without
// TLS is refused before anything starts.
func TestEmbeddedEtcdRefusesPlainHTTP(t *testing.T) {
	nstest.RequireRoot(t)
	out, err := exec.Command(filepath.Join(bins, "netplugin"), "--data-dir", t.TempDir(),
		"--etcd-client-url", "http://127.0.0.1:1", "--listen", "", "--docker-plugin", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "TLS only") {
		t.Fatalf("want a refusal naming TLS, got %v %s", err, out)
	}
}

// TestHostLabelValidated: a label that would break keys or paths ('/' split
// status keys before) is refused before anything starts.
func TestHostLabelValidated(t *testing.T) {
	for _, bad := range []string{"a/b", "../x", "a b", "", "-x"} {
		out, err := exec.Command(filepath.Join(bins, "netplugin"), "--host-label", bad, "--data-dir", t.TempDir(),
			"--listen", "", "--docker-plugin", "").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--host-label") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("host label %q: want a one-line refusal, got %v %q", bad, err, out)
		}
	}
}

// TestDuplicateHostLabelProcesses: a second netplugin with a host label that a
// running agent holds exits with one clear line, whether it runs on another
// machine (another run dir: the etcd compare refuses it) or on the same one
// (the per-label lock refuses it); the first keeps running.
func TestDuplicateHostLabelProcesses(t *testing.T) {
	nstest.RequireRoot(t)
	host := nstest.Prefix() + "-host"
	data := t.TempDir()
	first := newDaemon(t, host, "--data-dir", data)
	first.start()
	pki := func(f string) string { return filepath.Join(data, "pki", f) }
	for name, extra := range map[string][]string{
		// Another machine has no publication to read: it is given the files.
		"other machine": {"--run-dir", t.TempDir(), "--etcd-cacert", pki("ca.crt"), "--etcd-cert", pki("client.crt"), "--etcd-key", pki("client.key")},
		"same machine":  nil,
	} {
		args := append([]string{"--etcd-endpoints", first.etcdURL, "--host-label", host, "--data-dir", t.TempDir(),
			"--listen", "", "--docker-plugin", ""}, extra...)
		cmd := exec.Command(filepath.Join(bins, "netplugin"), args...)
		done := make(chan error, 1)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			last := strings.TrimSpace(out.String())
			last = last[strings.LastIndex(last, "\n")+1:]
			if err == nil || !strings.Contains(last, host) || !(strings.Contains(last, "held by another agent") || strings.Contains(last, "runs on this machine")) {
				t.Errorf("%s: want a refusal naming the label, got %v: %s", name, err, out.String())
			}
			t.Logf("%s: %s", name, last)
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("%s: a second agent with label %s kept running:\n%s", name, host, out.String())
		}
	}
	if r, err := http.Get("http://" + first.listen + "/healthz"); err != nil || r.StatusCode != 200 {
		t.Fatalf("first agent disturbed: %v %v", r, err)
	}
}
