package ovsdb

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
)

// MonitorID identifies a monitor on its Client; it is the json-value of the
// RFC 7047 monitor request.
type MonitorID string

// MonitorRequest selects what to monitor in one table. Empty Columns means
// all columns; nil Select means initial, insert, delete and modify.
type MonitorRequest struct {
	Columns []string       `json:"columns,omitempty"`
	Select  *MonitorSelect `json:"select,omitempty"`
}

// MonitorSelect chooses which kinds of change are reported. All four are
// sent, so set every one you want.
type MonitorSelect struct {
	Initial bool `json:"initial"`
	Insert  bool `json:"insert"`
	Delete  bool `json:"delete"`
	Modify  bool `json:"modify"`
}

// TableUpdates maps table name to the changed rows of that table.
type TableUpdates map[string]TableUpdate

// TableUpdate maps row uuid to its change.
type TableUpdate map[UUID]RowUpdate

// RowUpdate is one row's change. Old is nil for an insert (and the initial
// contents), New is nil for a delete. For a modify, New holds all monitored
// columns and Old only the columns that changed, with their previous values.
type RowUpdate struct {
	Old Row `json:"old,omitempty"`
	New Row `json:"new,omitempty"`
}

// Monitor starts monitoring db and returns the initial contents selected by
// requests (table name to request) together with the monitor's id for
// MonitorCancel.
//
// onUpdate receives every later "update" notification, one call at a time
// and in the server's order, on a goroutine of its own: it may block or call
// the Client without stalling other traffic. It is never called before
// Monitor has returned, so a caller that guards its state with a mutex held
// across Monitor and the handling of initial sees initial before any update.
// Deliveries stop when the monitor is cancelled or the Client ends; after a
// reconnect the caller must call Monitor again (see Reconnecting).
//
// If ctx ends after the request was sent the server may keep the monitor;
// its updates are then dropped by the client.
func (c *Client) Monitor(ctx context.Context, db string, requests map[string]MonitorRequest, onUpdate func(TableUpdates)) (TableUpdates, MonitorID, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, "", fmt.Errorf("ovsdb: monitor: %w", err)
	}
	c.nextMon++
	id := MonitorID(fmt.Sprintf("netplugin-%d", c.nextMon))
	m := &monitor{
		onUpdate: onUpdate,
		wake:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
	}
	// Register before sending: updates can only follow the reply, but the
	// reader must already know where to queue them when they arrive.
	c.monitors[id] = m
	c.mu.Unlock()

	fail := func(err error) (TableUpdates, MonitorID, error) {
		c.removeMonitor(id)
		return nil, "", err
	}
	res, err := c.call(ctx, "monitor", []any{db, id, requests})
	if err != nil {
		return fail(err)
	}
	var initial TableUpdates
	if err := json.Unmarshal(res, &initial); err != nil {
		return fail(fmt.Errorf("ovsdb: monitor %s: decode initial contents: %w", db, err))
	}
	go m.run()
	return initial, id, nil
}

// MonitorCancel stops the monitor id on the server. Local delivery stops
// immediately, even if the request then fails.
func (c *Client) MonitorCancel(ctx context.Context, id MonitorID) error {
	c.removeMonitor(id)
	_, err := c.call(ctx, "monitor_cancel", []any{id})
	return err
}

func (c *Client) removeMonitor(id MonitorID) {
	c.mu.Lock()
	m := c.monitors[id]
	delete(c.monitors, id)
	c.mu.Unlock()
	if m != nil {
		m.stop()
	}
}

// dispatchUpdate runs on the reader goroutine: it only decodes and queues.
func (c *Client) dispatchUpdate(params json.RawMessage) {
	var p []json.RawMessage
	if err := json.Unmarshal(params, &p); err != nil || len(p) != 2 {
		c.log.WithField("params", string(params)).Warn("ovsdb: malformed update notification")
		return
	}
	var id MonitorID
	if err := json.Unmarshal(p[0], &id); err != nil {
		c.log.WithField("id", string(p[0])).Debug("ovsdb: update for a foreign monitor id")
		return
	}
	var upd TableUpdates
	if err := json.Unmarshal(p[1], &upd); err != nil {
		c.log.WithError(err).Warn("ovsdb: cannot decode update notification")
		return
	}
	c.mu.Lock()
	m := c.monitors[id]
	c.mu.Unlock()
	if m == nil {
		c.log.WithField("monitor", id).Debug("ovsdb: update for a cancelled monitor")
		return
	}
	m.push(upd)
}

// monitor queues updates without bound so the reader never waits for a
// callback; OVSDB updates are small and a stuck callback is a caller bug
// that should not also freeze every transaction.
type monitor struct {
	onUpdate func(TableUpdates)

	mu    sync.Mutex
	queue []TableUpdates

	wake     chan struct{} // capacity 1: "the queue may be non-empty"
	quit     chan struct{}
	stopOnce sync.Once
}

func (m *monitor) push(u TableUpdates) {
	m.mu.Lock()
	m.queue = append(m.queue, u)
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *monitor) stop() { m.stopOnce.Do(func() { close(m.quit) }) }

func (m *monitor) run() {
	for {
		select {
		case <-m.quit:
			return
		case <-m.wake:
		}
		for {
			select {
			case <-m.quit:
				return
			default:
			}
			m.mu.Lock()
			if len(m.queue) == 0 {
				m.mu.Unlock()
				break
			}
			u := m.queue[0]
			m.queue[0] = nil
			m.queue = m.queue[1:]
			m.mu.Unlock()
			if m.onUpdate != nil {
				m.onUpdate(u)
			}
		}
	}
}
