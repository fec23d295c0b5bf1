package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Container lifecycle actions the agent reacts to. start: a new network
// namespace exists; die: the process is gone (the namespace may linger while
// other processes hold it); destroy: the container is removed for good.
const (
	ActionStart   = "start"
	ActionDie     = "die"
	ActionDestroy = "destroy"
)

// EventFilter selects the events to stream. The daemon applies it, so
// uninteresting events never cross the socket.
type EventFilter struct {
	// Actions to report; empty means start, die and destroy.
	Actions []string
	// Containers limits events to these IDs or names; empty means all.
	Containers []string
	// Labels limits events to containers carrying these labels, each
	// "key" or "key=value"; empty means no label filter.
	Labels []string
}

// Event is one container lifecycle event.
type Event struct {
	Action   string // ActionStart, ActionDie or ActionDestroy
	ID       string // full container ID
	Name     string // container name without leading "/"
	Image    string
	ExitCode int // for "die": the exit code; -1 otherwise or when unknown
	Time     time.Time
}

// EventStream is a running subscription. Read C until it is closed, then
// call Err, as with bufio.Scanner.
type EventStream struct {
	// C delivers events in daemon order. It is closed when the context
	// given to Events is done or the daemon ends the stream.
	C <-chan Event

	done chan struct{}
	mu   sync.Mutex
	err  error
}

// Err tells why C was closed: the context's error after cancellation,
// otherwise what broke the stream. A daemon restart ends the stream; the
// caller should then re-Inspect what it tracks (events may have been missed)
// and call Events again. Err returns nil while the stream is running.
func (s *EventStream) Err() error {
	select {
	case <-s.done:
	default:
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// wireEvent is the part of a /events message read here (API >= 1.22).
type wireEvent struct {
	Type   string `json:"Type"`
	Action string `json:"Action"`
	Actor  struct {
		ID         string            `json:"ID"`
		Attributes map[string]string `json:"Attributes"`
	} `json:"Actor"`
	Time     int64 `json:"time"`
	TimeNano int64 `json:"timeNano"`
}

// Events subscribes to container lifecycle events. It returns once the
// daemon has accepted the subscription, so anything that happens after
// Events returns is reported: a caller can subscribe first and then list or
// inspect containers without a window in which an event is lost.
//
// Only connecting and the response headers are bounded by the client's
// timeout; the stream itself lives until ctx is done.
func (c *Client) Events(ctx context.Context, f EventFilter) (*EventStream, error) {
	actions := f.Actions
	if len(actions) == 0 {
		actions = []string{ActionStart, ActionDie, ActionDestroy}
	}
	filters := map[string][]string{
		"type":  {"container"},
		"event": actions,
	}
	if len(f.Containers) > 0 {
		filters["container"] = f.Containers
	}
	if len(f.Labels) > 0 {
		filters["label"] = f.Labels
	}
	fj, err := json.Marshal(filters)
	if err != nil {
		return nil, fmt.Errorf("docker events: encoding filters: %w", err)
	}

	// The stream must outlive the header timeout, so the timeout cancels
	// the request only if it fires before the headers arrive.
	reqCtx, cancel := context.WithCancel(ctx)
	var timedOut atomic.Bool
	var timer *time.Timer
	if c.timeout > 0 {
		timer = time.AfterFunc(c.timeout, func() { timedOut.Store(true); cancel() })
	}
	resp, err := c.get(reqCtx, "/events?filters="+url.QueryEscape(string(fj)))
	if timer != nil && !timer.Stop() {
		// The timer fired (or is firing): the request is, or will be,
		// cancelled, so the stream is unusable even if headers arrived.
		<-reqCtx.Done()
		if err == nil {
			resp.Body.Close()
			err = context.DeadlineExceeded
		}
	}
	if err != nil {
		cancel()
		if timedOut.Load() && ctx.Err() == nil {
			err = fmt.Errorf("no answer within %s: %w", c.timeout, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("docker events %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel()
		defer drainClose(resp.Body)
		return nil, fmt.Errorf("docker events %s: %w", c.socket, readAPIError(resp))
	}

	ch := make(chan Event, 64)
	s := &EventStream{C: ch, done: make(chan struct{})}
	go func() {
		defer cancel()
		defer resp.Body.Close()
		err := decodeEvents(reqCtx, resp.Body, ch)
		if ctx.Err() != nil {
			// Cancellation surfaces as a read error on the body; report
			// the reason the caller knows about instead.
			err = ctx.Err()
		}
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(s.done)
		close(ch)
	}()
	return s, nil
}

// decodeEvents reads JSON messages from r until it fails, sending container
// events to ch. It never returns nil: the stream is endless by design, so
// its end is always worth reporting.
func decodeEvents(ctx context.Context, r io.Reader, ch chan<- Event) error {
	dec := json.NewDecoder(r)
	for {
		var we wireEvent
		if err := dec.Decode(&we); err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("docker events: daemon closed the stream")
			}
			return fmt.Errorf("docker events: %w", err)
		}
		// The daemon filters already; this guards against an old daemon
		// or a filter it ignored sending something else our way.
		if we.Type != "container" || we.Actor.ID == "" {
			continue
		}
		ev := Event{
			Action:   we.Action,
			ID:       we.Actor.ID,
			Name:     we.Actor.Attributes["name"],
			Image:    we.Actor.Attributes["image"],
			ExitCode: -1,
		}
		if code, err := strconv.Atoi(we.Actor.Attributes["exitCode"]); err == nil {
			ev.ExitCode = code
		}
		switch {
		case we.TimeNano != 0:
			ev.Time = time.Unix(0, we.TimeNano)
		case we.Time != 0:
			ev.Time = time.Unix(we.Time, 0)
		}
		select {
		case ch <- ev:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
