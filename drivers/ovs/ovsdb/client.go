// Package ovsdb is a small OVSDB (RFC 7047) JSON-RPC client.
//
// It exists because netplugin's OVS driver has to talk to ovsdb-server
// directly: the usual Go OVSDB libraries are not available to this project.
// The client deliberately stays small: it speaks the wire protocol
// (list_dbs, get_schema, transact, monitor, monitor_cancel, echo and the
// "update" notification), encodes and decodes the OVSDB JSON notation, and
// reports failures as wrapped Go errors. It has no schema awareness and no
// cache; callers build operations and read rows themselves.
//
// A Client is bound to one connection. When that connection is lost every
// in-flight and later call fails with an error for which
// errors.Is(err, ErrDisconnected) is true; the Client never reconnects by
// itself because a lost connection may have swallowed a transaction whose
// outcome only the caller can judge. To carry on, Dial again, or use
// Reconnecting, which does that on demand and re-runs a setup hook (for
// example to re-establish monitors).
package ovsdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

var (
	// ErrDisconnected is matched (errors.Is) by the error of every call that
	// could not complete because the connection to the server was lost.
	ErrDisconnected = errors.New("ovsdb: disconnected")
	// ErrClosed is matched by the error of calls made on, or interrupted by,
	// a Client the caller closed with Close.
	ErrClosed = errors.New("ovsdb: client closed")
)

// RPCError is a JSON-RPC level error returned by the server, for example
// "unknown database" for a transact on a database it does not serve. Errors
// of individual transaction operations are reported as *TxnError instead.
type RPCError struct {
	Method string
	// Err is the raw "error" member of the response.
	Err json.RawMessage
}

func (e *RPCError) Error() string {
	return fmt.Sprintf("ovsdb: %s: server error: %s", e.Method, string(e.Err))
}

// Client is one JSON-RPC connection to an OVSDB server. It is safe for
// concurrent use; requests are multiplexed over the connection and matched
// to their responses by id.
type Client struct {
	conn net.Conn
	log  *logrus.Entry

	nextID atomic.Uint64

	// writeMu serialises whole messages on the stream: interleaved partial
	// writes would corrupt the framing for the server.
	writeMu sync.Mutex

	mu       sync.Mutex
	pending  map[uint64]chan *response
	monitors map[MonitorID]*monitor
	nextMon  uint64
	err      error // why the connection ended; set once, before done is closed

	done chan struct{}
}

// message is the union of everything that can arrive on the stream:
// responses (result/error/id), requests (method/params/id) and
// notifications (method/params, id null).
type message struct {
	ID     json.RawMessage `json:"id,omitempty"`
	Method string          `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  json.RawMessage `json:"error,omitempty"`
}

type response struct {
	result json.RawMessage
	err    json.RawMessage
}

// Dial connects to the OVSDB server at addr, which is "unix:/path/to/sock"
// or "tcp:host:port" (the forms ovs-vsctl --db accepts; ssl is not
// supported). ctx bounds only the connection attempt. A nil log is replaced
// by the logrus standard logger.
func Dial(ctx context.Context, addr string, log *logrus.Entry) (*Client, error) {
	network, address, ok := strings.Cut(addr, ":")
	if !ok || address == "" || (network != "unix" && network != "tcp") {
		return nil, fmt.Errorf("ovsdb: dial %q: address must be unix:PATH or tcp:HOST:PORT", addr)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("ovsdb: dial %s: %w", addr, err)
	}
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	return newClient(conn, log.WithField("ovsdb", addr)), nil
}

func newClient(conn net.Conn, log *logrus.Entry) *Client {
	c := &Client{
		conn:     conn,
		log:      log,
		pending:  make(map[uint64]chan *response),
		monitors: make(map[MonitorID]*monitor),
		done:     make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// Close closes the connection. Calls in flight fail with ErrClosed and
// monitors stop delivering updates. Close is idempotent.
func (c *Client) Close() error {
	c.shutdown(ErrClosed)
	return nil
}

// Done is closed when the connection has ended, whether by Close or because
// it was lost. Err tells which.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is up, and afterwards the reason it
// ended (matching ErrClosed or ErrDisconnected).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// shutdown records why the connection ended, the first reason winning, and
// wakes every waiter. Closing the socket also unblocks the reader goroutine.
func (c *Client) shutdown(reason error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = reason
	mons := c.monitors
	c.monitors = make(map[MonitorID]*monitor)
	close(c.done)
	c.mu.Unlock()

	_ = c.conn.Close()
	for _, m := range mons {
		m.stop()
	}
}

// Echo sends an "echo" request and waits for the reply. It is the RFC 7047
// keepalive: use it to verify that the server is still answering.
func (c *Client) Echo(ctx context.Context) error {
	const payload = "netplugin-echo"
	res, err := c.call(ctx, "echo", []any{payload})
	if err != nil {
		return err
	}
	var got []string
	if err := json.Unmarshal(res, &got); err != nil || len(got) != 1 || got[0] != payload {
		return fmt.Errorf("ovsdb: echo: unexpected reply %s", string(res))
	}
	return nil
}

// ListDBs returns the names of the databases the server serves.
func (c *Client) ListDBs(ctx context.Context) ([]string, error) {
	res, err := c.call(ctx, "list_dbs", []any{})
	if err != nil {
		return nil, err
	}
	var dbs []string
	if err := json.Unmarshal(res, &dbs); err != nil {
		return nil, fmt.Errorf("ovsdb: list_dbs: decode reply: %w", err)
	}
	return dbs, nil
}

// GetSchema returns the raw JSON schema of db; callers that need parts of it
// decode only those.
func (c *Client) GetSchema(ctx context.Context, db string) (json.RawMessage, error) {
	return c.call(ctx, "get_schema", []any{db})
}

// call sends one request and waits for its response, the end of the
// connection, or ctx. A cancelled call leaves the request on the server: the
// late response is simply dropped by the reader.
func (c *Client) call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ovsdb: %s: %w", method, err)
	}
	id := c.nextID.Add(1)
	ch := make(chan *response, 1) // buffered: the reader must never block on us
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("ovsdb: %s: %w", method, err)
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	req := struct {
		Method string `json:"method"`
		Params any    `json:"params"`
		ID     uint64 `json:"id"`
	}{method, params, id}
	if err := c.send(ctx, req); err != nil {
		return nil, fmt.Errorf("ovsdb: %s: %w", method, err)
	}

	select {
	case r := <-ch:
		return r.result, r.asError(method)
	case <-c.done:
		// The response may have raced with the disconnect; prefer it.
		select {
		case r := <-ch:
			return r.result, r.asError(method)
		default:
		}
		return nil, fmt.Errorf("ovsdb: %s: %w", method, c.Err())
	case <-ctx.Done():
		return nil, fmt.Errorf("ovsdb: %s: %w", method, ctx.Err())
	}
}

func (r *response) asError(method string) error {
	if len(r.err) == 0 || string(r.err) == "null" {
		return nil
	}
	return &RPCError{Method: method, Err: r.err}
}

// send writes one JSON message. A failed or partial write leaves the stream
// in an unknown state, so it tears the connection down rather than letting
// later messages be misparsed.
func (c *Client) send(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
		defer func() { _ = c.conn.SetWriteDeadline(time.Time{}) }()
	}
	if _, err := c.conn.Write(b); err != nil {
		c.mu.Lock()
		closed := c.err
		c.mu.Unlock()
		if closed != nil {
			return closed
		}
		werr := fmt.Errorf("%w: write: %v", ErrDisconnected, err)
		c.shutdown(werr)
		return werr
	}
	return nil
}

// readLoop is the only reader of the connection. It routes responses to
// their callers, answers the server's echo requests and hands "update"
// notifications to their monitors; it never runs caller code itself so a
// slow callback cannot stall responses.
func (c *Client) readLoop() {
	dec := json.NewDecoder(c.conn)
	for {
		var msg message
		if err := dec.Decode(&msg); err != nil {
			c.shutdown(fmt.Errorf("%w: read: %v", ErrDisconnected, err))
			return
		}
		switch {
		case msg.Method == "echo":
			// Answer on another goroutine: if our own writes were blocked on
			// a full socket, replying inline would stop us reading and
			// deadlock both sides.
			go c.replyEcho(msg)
		case msg.Method == "update":
			c.dispatchUpdate(msg.Params)
		case msg.Method != "":
			c.log.WithField("method", msg.Method).Debug("ovsdb: ignoring unsupported request from server")
		default:
			c.deliver(msg)
		}
	}
}

func (c *Client) replyEcho(msg message) {
	params := msg.Params
	if len(params) == 0 {
		params = json.RawMessage("[]")
	}
	reply := struct {
		Result json.RawMessage `json:"result"`
		Error  any             `json:"error"`
		ID     json.RawMessage `json:"id"`
	}{params, nil, msg.ID}
	if err := c.send(context.Background(), reply); err != nil {
		c.log.WithError(err).Debug("ovsdb: failed to answer echo")
		return
	}
	c.log.Debug("ovsdb: answered echo from server")
}

func (c *Client) deliver(msg message) {
	id, err := strconv.ParseUint(string(msg.ID), 10, 64)
	if err != nil {
		c.log.WithField("id", string(msg.ID)).Debug("ovsdb: dropping response with foreign id")
		return
	}
	c.mu.Lock()
	ch := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if ch == nil {
		// The caller gave up (ctx) before the answer came.
		return
	}
	ch <- &response{result: msg.Result, err: msg.Error}
}
