package ovsdb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

var (
	// ErrNoColumn is matched by the Row getters when the row lacks the
	// column, usually because the select did not ask for it.
	ErrNoColumn = errors.New("ovsdb: column not in row")
	// ErrNoValue is matched by the single-value Row getters when an optional
	// column (a set with min 0, max 1, such as Port.tag) is empty.
	ErrNoValue = errors.New("ovsdb: column has no value")
)

// Row is one table row as column name to value. When used in an operation,
// values are Go atoms or UUID, NamedUUID, Set, Map. When decoded from the
// server, values are string, int64, float64, bool, UUID, Set or Map, where
// Set and Map contain decoded atoms of the same kinds.
type Row map[string]any

// UnmarshalJSON decodes OVSDB notation into the Go types listed on Row.
func (r *Row) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("ovsdb: decode row: %w", err)
	}
	row := make(Row, len(raw))
	for col, v := range raw {
		val, err := decodeValue(v)
		if err != nil {
			return fmt.Errorf("ovsdb: decode column %q: %w", col, err)
		}
		row[col] = val
	}
	*r = row
	return nil
}

func decodeValue(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // keep integers exact instead of float64
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return convert(v)
}

// convert turns generic JSON into the OVSDB Go types. Tagged arrays are the
// only arrays OVSDB data contains, so any other array is malformed.
func convert(v any) (any, error) {
	switch t := v.(type) {
	case json.Number:
		if i, err := strconv.ParseInt(string(t), 10, 64); err == nil {
			return i, nil
		}
		f, err := t.Float64()
		if err != nil {
			return nil, fmt.Errorf("bad number %q: %w", t, err)
		}
		return f, nil
	case []any:
		if len(t) != 2 {
			return nil, fmt.Errorf("unexpected array of %d elements", len(t))
		}
		tag, _ := t[0].(string)
		switch tag {
		case "uuid", "named-uuid":
			s, ok := t[1].(string)
			if !ok {
				return nil, fmt.Errorf("%s value is %T, want string", tag, t[1])
			}
			if tag == "uuid" {
				return UUID(s), nil
			}
			return NamedUUID(s), nil
		case "set":
			elems, ok := t[1].([]any)
			if !ok {
				return nil, fmt.Errorf("set value is %T, want array", t[1])
			}
			set := make(Set, 0, len(elems))
			for _, e := range elems {
				ce, err := convert(e)
				if err != nil {
					return nil, err
				}
				set = append(set, ce)
			}
			return set, nil
		case "map":
			pairs, ok := t[1].([]any)
			if !ok {
				return nil, fmt.Errorf("map value is %T, want array", t[1])
			}
			m := make(Map, len(pairs))
			for _, p := range pairs {
				kv, ok := p.([]any)
				if !ok || len(kv) != 2 {
					return nil, fmt.Errorf("malformed map pair %v", p)
				}
				k, err := convert(kv[0])
				if err != nil {
					return nil, err
				}
				// Keys are atoms (RFC 7047 5.1); a set or map is not even
				// hashable, and indexing the Go map with one would panic.
				switch k.(type) {
				case Set, Map:
					return nil, fmt.Errorf("map key %v is not an atom", kv[0])
				}
				val, err := convert(kv[1])
				if err != nil {
					return nil, err
				}
				m[k] = val
			}
			return m, nil
		default:
			return nil, fmt.Errorf("unknown tagged value %q", tag)
		}
	default:
		return v, nil
	}
}

// scalar returns the single atom of col, unwrapping a one-element set: the
// server encodes an optional column that has a value either way.
func (r Row) scalar(col string) (any, error) {
	v, ok := r[col]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoColumn, col)
	}
	if s, ok := v.(Set); ok {
		switch len(s) {
		case 0:
			return nil, fmt.Errorf("%w: %q", ErrNoValue, col)
		case 1:
			return s[0], nil
		default:
			return nil, fmt.Errorf("ovsdb: column %q has %d values, want one", col, len(s))
		}
	}
	return v, nil
}

// elems returns the atoms of a set column; a bare atom is a one-element set.
func (r Row) elems(col string) ([]any, error) {
	v, ok := r[col]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoColumn, col)
	}
	if s, ok := v.(Set); ok {
		return s, nil
	}
	return []any{v}, nil
}

func typed[T any](r Row, col string) (T, error) {
	var zero T
	v, err := r.scalar(col)
	if err != nil {
		return zero, err
	}
	t, ok := v.(T)
	if !ok {
		return zero, fmt.Errorf("ovsdb: column %q is %T, want %T", col, v, zero)
	}
	return t, nil
}

// GetString reads a string column (or an optional string set with a value).
func (r Row) GetString(col string) (string, error) { return typed[string](r, col) }

// GetInt reads an integer column, such as Port.tag or Interface.ofport.
func (r Row) GetInt(col string) (int64, error) { return typed[int64](r, col) }

// GetBool reads a boolean column.
func (r Row) GetBool(col string) (bool, error) { return typed[bool](r, col) }

// GetUUID reads a single reference column, or "_uuid".
func (r Row) GetUUID(col string) (UUID, error) { return typed[UUID](r, col) }

// UUID returns the row's own uuid (the "_uuid" column).
func (r Row) UUID() (UUID, error) { return r.GetUUID("_uuid") }

// GetUUIDs reads a set of references, such as Bridge.ports.
func (r Row) GetUUIDs(col string) ([]UUID, error) { return typedSet[UUID](r, col) }

// GetStrings reads a set of strings.
func (r Row) GetStrings(col string) ([]string, error) { return typedSet[string](r, col) }

func typedSet[T any](r Row, col string) ([]T, error) {
	es, err := r.elems(col)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(es))
	for _, e := range es {
		t, ok := e.(T)
		if !ok {
			var zero T
			return nil, fmt.Errorf("ovsdb: column %q holds %T, want %T", col, e, zero)
		}
		out = append(out, t)
	}
	return out, nil
}

// GetStringMap reads a string-to-string map column such as external_ids.
func (r Row) GetStringMap(col string) (map[string]string, error) {
	v, ok := r[col]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoColumn, col)
	}
	m, ok := v.(Map)
	if !ok {
		return nil, fmt.Errorf("ovsdb: column %q is %T, want map", col, v)
	}
	out := make(map[string]string, len(m))
	for k, val := range m {
		ks, ok1 := k.(string)
		vs, ok2 := val.(string)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("ovsdb: column %q has pair %v=%v, want strings", col, k, val)
		}
		out[ks] = vs
	}
	return out, nil
}

// OperationResult is the result of one operation of a transaction. Which
// members are set depends on the op: UUID for insert, Rows for select, Count
// for update, mutate and delete.
type OperationResult struct {
	Count   int    `json:"count,omitempty"`
	UUID    UUID   `json:"uuid,omitempty"`
	Rows    []Row  `json:"rows,omitempty"`
	Error   string `json:"error,omitempty"`
	Details string `json:"details,omitempty"`
}

// TxnError reports a transaction the server refused. The server commits
// nothing when any operation fails, so a TxnError means the database is
// unchanged. Match it with errors.As.
type TxnError struct {
	// Index is the failing operation's position in the ops passed to
	// Transact. It equals len(ops) for errors found at commit time, such as
	// a referential integrity or constraint violation.
	Index int
	// Op is the failing operation's "op" member, or "commit".
	Op string
	// Err is the RFC 7047 error string, e.g. "constraint violation".
	Err string
	// Details is the server's human readable explanation, if any.
	Details string
}

func (e *TxnError) Error() string {
	msg := fmt.Sprintf("ovsdb: operation %d (%s) failed: %s", e.Index, e.Op, e.Err)
	if e.Details != "" {
		msg += ": " + e.Details
	}
	return msg
}

// Transact runs ops atomically in db. On success it returns one result per
// op. If the server rejects the transaction it returns the partial results
// and an error wrapping *TxnError; transport failures wrap ErrDisconnected,
// ErrClosed or ctx.Err(). A transport failure after the request was sent
// leaves the outcome unknown: the caller must re-read state before retrying.
func (c *Client) Transact(ctx context.Context, db string, ops ...Operation) ([]OperationResult, error) {
	params := make([]any, 0, len(ops)+1)
	params = append(params, db)
	for _, op := range ops {
		params = append(params, op)
	}
	res, err := c.call(ctx, "transact", params)
	if err != nil {
		return nil, err
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(res, &raw); err != nil {
		return nil, fmt.Errorf("ovsdb: transact %s: decode reply: %w", db, err)
	}
	results := make([]OperationResult, len(raw))
	for i, r := range raw {
		// Ops after a failed one are answered with null: leave them zero.
		if string(r) == "null" {
			continue
		}
		if err := json.Unmarshal(r, &results[i]); err != nil {
			return nil, fmt.Errorf("ovsdb: transact %s: decode result %d: %w", db, i, err)
		}
	}
	for i, r := range results {
		if r.Error == "" {
			continue
		}
		te := &TxnError{Index: i, Op: "commit", Err: r.Error, Details: r.Details}
		if i < len(ops) {
			te.Op = ops[i].Op
		}
		return results, fmt.Errorf("ovsdb: transact %s: %w", db, te)
	}
	if len(results) != len(ops) {
		return results, fmt.Errorf("ovsdb: transact %s: got %d results for %d operations", db, len(results), len(ops))
	}
	return results, nil
}
