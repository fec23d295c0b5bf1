// Package docker is a minimal client for the Docker Engine API, spoken as plain
// HTTP over dockerd's unix socket.
//
// The agent only needs to turn a container ID or name into the network
// namespace of its running process, and to hear quickly when containers start
// or stop. Pulling in the Docker client module for that would drag a large
// dependency tree (and its API version pinning) into the agent, so this
// package implements the three endpoints it needs with net/http.
//
// Requests use unversioned API paths (/containers/{id}/json rather than
// /v1.41/...). The daemon then answers with its own newest API version, and
// the few fields read here (Id, Name, State.Pid, State.Running, and the
// Type/Action/Actor of events) have been stable since API 1.22. Pinning a
// version would break against daemons that raised their minimum API version
// (Docker 29 refuses anything older than 1.44) or older ones that do not
// know a newer version (Debian 12 ships 20.10, API 1.41).
package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultSocket is where dockerd listens unless told otherwise.
const DefaultSocket = "/var/run/docker.sock"

// DefaultTimeout bounds each non-streaming request. dockerd answers inspect
// and ping in milliseconds; a daemon that takes longer is wedged (typically
// blocked on containerd), and the agent must not hang with it.
const DefaultTimeout = 10 * time.Second

// ErrNotFound reports that the daemon knows no container by that ID or name
// (HTTP 404). Test with errors.Is: the returned errors wrap it together with
// the container name and the daemon's message.
var ErrNotFound = errors.New("container not found")

// ErrNotRunning reports that the container exists but has no running process,
// so it has no network namespace to join.
var ErrNotRunning = errors.New("container not running")

// APIError is a non-2xx answer from the daemon. errors.Is(err, ErrNotFound)
// holds for a 404, so callers rarely need the status code itself.
type APIError struct {
	StatusCode int
	Message    string // the daemon's "message" field, or the raw body
}

func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("HTTP %d", e.StatusCode)
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.StatusCode)
}

// Is makes a 404 match ErrNotFound, so callers can test for a missing
// container without knowing about HTTP.
func (e *APIError) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound
}

// Client talks to one dockerd. It is safe for concurrent use.
type Client struct {
	socket  string
	timeout time.Duration
	http    *http.Client
}

// New returns a client for the daemon listening on socketPath. A "unix://"
// prefix is accepted (the form DOCKER_HOST and `docker -H` use) and an empty
// path means DefaultSocket. New does not connect; use Ping to check the
// daemon is there.
func New(socketPath string) *Client {
	socketPath = strings.TrimPrefix(socketPath, "unix://")
	if socketPath == "" {
		socketPath = DefaultSocket
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		// Every request goes to the socket whatever the URL's host says;
		// the host in the URL is only a placeholder HTTP requires.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socketPath)
		},
		// Never consult HTTP(S)_PROXY: the socket is local by definition.
		Proxy:               nil,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{
		socket:  socketPath,
		timeout: DefaultTimeout,
		// No http.Client.Timeout: it would also cut the endless events
		// stream. Per-request deadlines come from the context instead.
		http: &http.Client{Transport: transport},
	}
}

// WithTimeout returns a copy of c whose non-streaming requests give up after
// d (a shorter deadline on the caller's context still wins). d <= 0 means
// the caller's context alone decides.
func (c *Client) WithTimeout(d time.Duration) *Client {
	cp := *c
	cp.timeout = d
	return &cp
}

// Socket is the unix socket path the client dials.
func (c *Client) Socket() string { return c.socket }

// Container is what the agent needs to know about one container.
type Container struct {
	ID        string
	Name      string // without the leading "/" the API puts there
	Pid       int    // host PID of the container's init process; 0 when not running
	Running   bool
	Status    string    // "created", "running", "paused", "restarting", "exited", "dead"
	StartedAt time.Time // changes on every (re)start, so a PID can be tied to one run
}

// NetNSPath is the network namespace of the container's running process,
// /proc/<pid>/ns/net. It fails with ErrNotRunning when there is no process:
// /proc/0/ns/net does not exist, and handing out an empty path would only
// move the failure somewhere less obvious.
//
// The path names a process, not the namespace itself: if the container
// stops, the PID may be reused by an unrelated process. Open the file (or
// setns into it) right away and, where it matters, Inspect again afterwards
// and compare Pid and StartedAt.
//
// The PID is in dockerd's PID namespace, so the caller must share it (the
// agent runs on the host, as dockerd does).
func (c Container) NetNSPath() (string, error) {
	if !c.Running || c.Pid <= 0 {
		return "", fmt.Errorf("container %q (status %s): %w", c.Name, c.Status, ErrNotRunning)
	}
	return "/proc/" + strconv.Itoa(c.Pid) + "/ns/net", nil
}

// Ping checks that the daemon answers on the socket.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.get(ctx, "/_ping")
	if err != nil {
		return fmt.Errorf("docker ping %s: %w", c.socket, err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("docker ping %s: %w", c.socket, readAPIError(resp))
	}
	return nil
}

// inspectResponse holds the part of GET /containers/{id}/json read here.
type inspectResponse struct {
	ID    string `json:"Id"`
	Name  string `json:"Name"`
	State struct {
		Status    string `json:"Status"`
		Running   bool   `json:"Running"`
		Pid       int    `json:"Pid"`
		StartedAt string `json:"StartedAt"`
	} `json:"State"`
}

// Inspect looks a container up by ID, ID prefix or name. A missing container
// gives an error matching ErrNotFound. A stopped container is not an error:
// Running is false and NetNSPath reports ErrNotRunning.
func (c *Client) Inspect(ctx context.Context, idOrName string) (Container, error) {
	if idOrName == "" {
		// GET /containers//json would be answered by some other route.
		return Container{}, errors.New("docker inspect: empty container ID or name")
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.get(ctx, "/containers/"+url.PathEscape(idOrName)+"/json")
	if err != nil {
		return Container{}, fmt.Errorf("docker inspect %q: %w", idOrName, err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return Container{}, fmt.Errorf("docker inspect %q: %w", idOrName, readAPIError(resp))
	}
	var raw inspectResponse
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return Container{}, fmt.Errorf("docker inspect %q: decoding answer: %w", idOrName, err)
	}
	ctr := Container{
		ID:      raw.ID,
		Name:    strings.TrimPrefix(raw.Name, "/"),
		Pid:     raw.State.Pid,
		Running: raw.State.Running,
		Status:  raw.State.Status,
	}
	// A container that never started has "0001-01-01T00:00:00Z"; a
	// malformed time is not worth failing the lookup over.
	if t, err := time.Parse(time.RFC3339Nano, raw.State.StartedAt); err == nil {
		ctr.StartedAt = t
	}
	return ctr, nil
}

// NetNSPath inspects idOrName and returns its network namespace path: the
// one call the agent makes when a container is attached. Errors match
// ErrNotFound or ErrNotRunning.
func (c *Client) NetNSPath(ctx context.Context, idOrName string) (string, error) {
	ctr, err := c.Inspect(ctx, idOrName)
	if err != nil {
		return "", err
	}
	return ctr.NetNSPath()
}

// withTimeout applies the client's per-request timeout on top of ctx.
func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// get issues GET path. Transport errors come back without net/url's
// `Get "http://docker/...": ` prefix, which repeats a placeholder URL and
// says nothing the caller's message does not.
func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			return nil, uerr.Err
		}
		return nil, err
	}
	return resp, nil
}

// readAPIError turns a non-2xx response into an *APIError. dockerd sends
// {"message": "..."}; anything else is kept verbatim (trimmed), since a
// proxy or a wrong socket is exactly the case where the raw body helps.
func readAPIError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	apiErr := &APIError{StatusCode: resp.StatusCode}
	var msg struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &msg) == nil && msg.Message != "" {
		apiErr.Message = msg.Message
	} else {
		apiErr.Message = strings.Join(strings.Fields(string(body)), " ")
	}
	return apiErr
}

// drainClose lets the keep-alive connection be reused after a short answer.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	_ = body.Close()
}
