package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/netplugin/netplugin/state"
	"github.com/netplugin/netplugin/state/etcdserver"
)

// etcdEnv is an embedded etcd in the benchmark process and a store on it.
type etcdEnv struct {
	etcd   *etcdserver.Server
	store  *state.Store
	url    string
	listen string // for the agent's health endpoint
	dir    string
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (b *bench) startEtcd(ctx context.Context) (*etcdEnv, error) {
	dir, err := os.MkdirTemp("", "np-bench-etcd")
	if err != nil {
		return nil, err
	}
	e, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: dir,
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort()), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", freePort())})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s, err := state.Connect(ctx, []string{e.Endpoint()}, 5*time.Second, b.log)
	if err != nil {
		e.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	return &etcdEnv{etcd: e, store: s, url: e.Endpoint(), listen: fmt.Sprintf("127.0.0.1:%d", freePort()), dir: dir}, nil
}

func (e *etcdEnv) close() {
	_ = e.store.Close()
	e.etcd.Close()
	os.RemoveAll(e.dir)
}
