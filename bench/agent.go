package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/state"
)

// agentProc is a netplugin process pointed at the benchmark's etcd.
type agentProc struct {
	cmd *exec.Cmd
	log bytes.Buffer
}

func (b *bench) startAgent(etcdURL, listen, host string, extra ...string) (*agentProc, error) {
	a := &agentProc{}
	args := append([]string{"--etcd-endpoints", etcdURL, "--host-label", host, "--listen", listen,
		"--resync", "60s", "--docker-plugin", "", "--data-dir", filepath.Join(b.dataDir, host)}, extra...)
	a.cmd = exec.Command(b.netplugin, args...)
	a.cmd.Stdout, a.cmd.Stderr = &a.log, &a.log
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", b.netplugin, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := http.Get("http://" + listen + "/healthz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return a, nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	a.stop()
	return nil, fmt.Errorf("netplugin not healthy after 20s: %s", a.log.String())
}

// cleanStateDirs removes the driver records an agent of host kept under /run
// (empty once its endpoints are gone).
func cleanStateDirs(host string) {
	for _, drv := range []string{"macvlan", "ipvlan", "hostnic"} {
		_ = os.RemoveAll(filepath.Join("/run/netplugin", drv, host))
	}
}

func (a *agentProc) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	_ = a.cmd.Wait()
}

// waitUp watches the status of host until want endpoints of tenant are up and
// returns their host-side ifindexes.
func waitUp(ctx context.Context, cli *clientv3.Client, host, tenant string, want int, timeout time.Duration) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Status keys are status/<tenant>/<endpoint>/<host>: the tenant's, filtered by host.
	prefix := state.StatusPrefix + tenant + "/"
	up := map[string]int{}
	apply := func(key string, val []byte, del bool) {
		if !strings.HasSuffix(key, "/"+host) {
			return
		}
		if del {
			delete(up, key)
			return
		}
		var st core.EndpointStatus
		if json.Unmarshal(val, &st) == nil && st.State == core.StateUp {
			up[key] = st.IfIndex
		} else {
			delete(up, key)
		}
	}
	r, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	for _, kv := range r.Kvs {
		apply(string(kv.Key), kv.Value, false)
	}
	if len(up) >= want {
		return up, nil
	}
	for resp := range cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1)) {
		if err := resp.Err(); err != nil {
			return nil, err
		}
		for _, ev := range resp.Events {
			apply(string(ev.Kv.Key), ev.Kv.Value, ev.Type == mvccpb.DELETE)
		}
		if len(up) >= want {
			return up, nil
		}
	}
	return nil, fmt.Errorf("%d of %d endpoints up after %s", len(up), want, timeout)
}

// endpointsDoc is a -cfg document with one network of n endpoints, one per namespace.
func endpointsDoc(tenant, driver, subnet, host string, nss []string, opts map[string]string) state.Document {
	nd := state.NetworkDocument{Name: "net", Driver: driver, Subnet: subnet, Options: opts}
	for i, ns := range nss {
		nd.Endpoints = append(nd.Endpoints, state.EndpointDocument{Name: fmt.Sprintf("e%d", i), NetNS: ns, Host: host})
	}
	return state.Document{Tenants: []state.TenantDocument{{Name: tenant, Networks: []state.NetworkDocument{nd}}}}
}

func sameIndexes(a, b map[string]int) int {
	changed := 0
	for k, v := range a {
		if b[k] != v {
			changed++
		}
	}
	return changed + max(0, len(b)-len(a))
}

func trimLog(s string) string {
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return strings.TrimSpace(s)
}
