// Package etcdserver runs etcd inside netplugin's process, so that a single
// host needs no etcd of its own. It is its own package so that only the agent
// links the etcd server; netdcli and the store need just the client.
package etcdserver

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config says where a single-host etcd listens and keeps its data.
type Config struct {
	DataDir   string
	ClientURL string // e.g. http://127.0.0.1:2379
	PeerURL   string // e.g. http://127.0.0.1:2380
	Name      string
	// TLS, when set, closes both listeners to anyone without a certificate
	// signed by CA: clients and peers must present one (--client-cert-auth).
	// Cert and Key serve both listeners. The URLs must be https then.
	TLS *ServerTLS
	// Logger receives etcd's own log; nil silences it (tests, benchmarks).
	Logger *zap.Logger
}

// ServerTLS are the certificate files of an etcd server.
type ServerTLS struct{ CA, Cert, Key string }

// Server is an etcd server running inside this process.
type Server struct {
	e   *embed.Etcd
	url string
}

// Start runs etcd in-process and waits until it serves. A lone host
// needs nothing else; many hosts point every agent at a real cluster instead.
func Start(ctx context.Context, c Config) (*Server, error) {
	cfg := embed.NewConfig()
	cfg.Dir = c.DataDir
	if c.Name != "" {
		cfg.Name = c.Name
	}
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("client URL %q: %w", c.ClientURL, err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("peer URL %q: %w", c.PeerURL, err)
	}
	if c.TLS != nil {
		if cu.Scheme != "https" || pu.Scheme != "https" {
			return nil, fmt.Errorf("embedded etcd serves TLS only: use https:// URLs (have %s and %s)", c.ClientURL, c.PeerURL)
		}
		info := transport.TLSInfo{CertFile: c.TLS.Cert, KeyFile: c.TLS.Key, TrustedCAFile: c.TLS.CA, ClientCertAuth: true}
		cfg.ClientTLSInfo, cfg.PeerTLSInfo = info, info
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.LogLevel = "error"
	logger := c.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(logger)
	// Bulk -cfg applies batch many keys per transaction; allow more than a
	// cluster's default 128 here, while the client keeps its batches under 128
	// so that it works against default clusters too.
	cfg.MaxTxnOps = 1024
	// Keep history bounded: compaction is what makes watchers re-list, and it
	// must happen in a long-running daemon.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", c.DataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s did not become ready in 60s", c.DataDir)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Server{e: e, url: cu.String()}, nil
}

// Endpoint is the client URL.
func (m *Server) Endpoint() string { return m.url }

// Close stops the server.
func (m *Server) Close() { m.e.Close() }
