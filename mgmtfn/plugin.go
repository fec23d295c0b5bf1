// Package mgmtfn serves Docker's CNM remote network driver and IPAM driver on
// one socket (`docker network create -d netplugin --ipam-driver netplugin`).
// Handlers only translate Docker's calls into netplugin's desired state in etcd
// and, for Join and DeleteEndpoint, program this host at once through the same
// driver the agent uses; they never call back into the Docker API (Docker holds
// locks while it waits for a plugin, and has no timeout).
package mgmtfn

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/sdk"
	"github.com/sirupsen/logrus"

	"github.com/netplugin/netplugin/core"
	"github.com/netplugin/netplugin/internal/docker"
	"github.com/netplugin/netplugin/state"
)

// DefaultSocketDir is where Docker looks for plugin sockets.
const DefaultSocketDir = "/run/docker/plugins"

// Agent is what the plugin needs of the local agent: to program links while no
// sync runs, and to ask for a sync.
type Agent interface {
	Exclusive(ctx context.Context, fn func(context.Context) (int64, error)) error
	Poke()
}

// Config wires the plugin.
type Config struct {
	Name      string // plugin name: the -d and --ipam-driver value; socket <SocketDir>/<Name>.sock
	SocketDir string
	Host      string
	Store     *state.Store
	Drivers   map[string]core.Driver
	Agent     Agent
	Docker    *docker.Client // for the background loop only, never in a handler
	Timeout   time.Duration  // per handler: Docker waits forever, we do not
	GCPeriod  time.Duration
	Log       *logrus.Entry
}

// Plugin is the CNM network and IPAM driver.
type Plugin struct {
	cfg  Config
	dk   *state.Docker
	log  *logrus.Entry
	base context.Context
	// kick asks the background loop to run soon (a network was just created
	// and needs its Docker name).
	kick chan struct{}

	mu       sync.Mutex
	suspect  map[string]int          // Docker endpoints Docker no longer knows, by endpoint key: passes seen
	released map[string]time.Time    // Docker endpoints whose address Docker released before deleting them, by key
	pools    map[string]*pendingPool // IPAM pools no CreateNetwork bound yet, by subnet
}

// New returns a plugin; Serve runs it.
func New(cfg Config) *Plugin {
	if cfg.SocketDir == "" {
		cfg.SocketDir = DefaultSocketDir
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.GCPeriod <= 0 {
		cfg.GCPeriod = 10 * time.Second
	}
	return &Plugin{cfg: cfg, dk: cfg.Store.Docker(), log: cfg.Log.WithField("plugin", cfg.Name), kick: make(chan struct{}, 1),
		suspect: map[string]int{}, released: map[string]time.Time{}, pools: map[string]*pendingPool{}}
}

// Socket is the path Docker finds the plugin at.
func (p *Plugin) Socket() string { return filepath.Join(p.cfg.SocketDir, p.cfg.Name+".sock") }

// Serve listens until ctx ends. The socket is opened first, so that Docker never
// waits on a missing plugin; etcd work happens per call.
func (p *Plugin) Serve(ctx context.Context) error {
	p.base = ctx
	if err := os.MkdirAll(p.cfg.SocketDir, 0o755); err != nil {
		return fmt.Errorf("plugin dir: %w", err)
	}
	sock := p.Socket()
	l, err := listenPrivate(sock)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: p.mux(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go p.background(ctx)
	p.log.WithField("socket", sock).Info("Docker network and IPAM driver listening")
	err = srv.Serve(l)
	_ = os.Remove(sock)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// listenPrivate listens on a unix socket at path that only root can connect
// to, whatever the umask: the socket is made and chmodded in a directory of its
// own (0700) and only then renamed into place, so no other user ever sees it
// open. A socket left at path by a crash is replaced (Docker redials the path on
// every call).
func listenPrivate(path string) (*net.UnixListener, error) {
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".netplugin-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(tmp, "s"), Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false) // it is renamed; Serve removes it at path
	if err := os.Chmod(filepath.Join(tmp, "s"), 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Rename(filepath.Join(tmp, "s"), path); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// maxBody bounds a request body: Docker's largest (CreateNetwork with its
// options) is a few KiB.
const maxBody = 1 << 20

// handle adapts a typed handler: decode the request, run it with a deadline,
// encode the answer; errors go out as HTTP 500 {"Err": ...}, the form both of
// Docker's proxies accept.
func handle[Req, Resp any](p *Plugin, op string, fn func(context.Context, *Req) (*Resp, error)) http.HandlerFunc {
	return handleOr(p, op, fn, nil)
}

// handleOr is handle answering onBadRequest, when not nil, to a body it cannot
// decode (for calls that must never fail).
func handleOr[Req, Resp any](p *Plugin, op string, fn func(context.Context, *Req) (*Resp, error), onBadRequest *Resp) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		req := new(Req)
		if r.ContentLength != 0 {
			body := http.MaxBytesReader(w, r.Body, maxBody)
			if err := json.NewDecoder(body).Decode(req); err != nil {
				if onBadRequest != nil {
					p.log.WithError(err).WithField("op", op).Warn("bad request")
					sdk.EncodeResponse(w, onBadRequest, false)
					return
				}
				msg := err.Error()
				if errors.As(err, new(*http.MaxBytesError)) {
					msg = fmt.Sprintf("request body too large (over %d bytes)", maxBody)
				}
				sdk.EncodeResponse(w, map[string]string{"Err": "netplugin: " + op + ": bad request: " + oneLine(msg)}, true)
				return
			}
		}
		ctx, cancel := context.WithTimeout(p.base, p.cfg.Timeout)
		defer cancel()
		start := time.Now()
		resp, err := fn(ctx, req)
		log := p.log.WithFields(logrus.Fields{"op": op, "took": time.Since(start).Round(time.Microsecond)})
		if err != nil {
			log.WithError(err).Warn("request failed")
			sdk.EncodeResponse(w, map[string]string{"Err": "netplugin: " + oneLine(err.Error())}, true)
			return
		}
		log.Debug("request served")
		if resp == nil {
			sdk.EncodeResponse(w, struct{}{}, false)
			return
		}
		sdk.EncodeResponse(w, resp, false)
	}
}

// oneLine keeps an error message on one line for Docker's log and CLI.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

type empty struct{}

func (p *Plugin) mux() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("/Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		sdk.EncodeResponse(w, map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}}, false)
	})
	p.networkRoutes(m)
	p.ipamRoutes(m)
	return m
}

// validID checks a Docker network or endpoint ID: 64 lowercase hex digits, as
// Docker makes them. Our keys and link names derive from them.
func validID(kind, id string) error {
	if len(id) == 64 {
		if _, err := hex.DecodeString(id); err == nil && strings.ToLower(id) == id {
			return nil
		}
	}
	return fmt.Errorf("%w: %s ID %.80q: want 64 hex digits", core.ErrInvalid, kind, id)
}
