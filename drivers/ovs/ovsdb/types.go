package ovsdb

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// The Go types below encode to the RFC 7047 section 5.1 notation. Plain Go
// strings, integers, floats and bools are atoms and need no wrapper; UUIDs,
// sets and maps do, because OVSDB distinguishes them with a tagged
// two-element array.

// UUID is a reference to an existing row. It encodes as ["uuid","..."].
type UUID string

// MarshalJSON implements json.Marshaler.
func (u UUID) MarshalJSON() ([]byte, error) {
	return json.Marshal([2]string{"uuid", string(u)})
}

// UnmarshalJSON accepts ["uuid","..."] and, for convenience, a bare string.
func (u *UUID) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*u = UUID(s)
		return nil
	}
	var pair [2]string
	if err := json.Unmarshal(b, &pair); err != nil || pair[0] != "uuid" {
		return fmt.Errorf("ovsdb: %s is not a uuid", string(b))
	}
	*u = UUID(pair[1])
	return nil
}

// NamedUUID refers, within one transaction, to the row inserted by an
// earlier operation with that uuid-name. It encodes as ["named-uuid","..."].
// The server resolves it; it never appears in results.
type NamedUUID string

// MarshalJSON implements json.Marshaler.
func (n NamedUUID) MarshalJSON() ([]byte, error) {
	return json.Marshal([2]string{"named-uuid", string(n)})
}

// Set is an OVSDB set of atoms. It always encodes in the explicit
// ["set",[...]] form, which the server accepts for any set column, including
// optional scalars such as Port.tag where Set{} means "no value".
type Set []any

// MarshalJSON implements json.Marshaler.
func (s Set) MarshalJSON() ([]byte, error) {
	elems := []any(s)
	if elems == nil {
		elems = []any{} // a nil slice would encode as null, which is invalid
	}
	return json.Marshal([]any{"set", elems})
}

// SetOf builds a Set from a typed slice, e.g. SetOf([]UUID{a, b}).
func SetOf[T any](elems []T) Set {
	s := make(Set, 0, len(elems))
	for _, e := range elems {
		s = append(s, e)
	}
	return s
}

// Map is an OVSDB map. Keys are atoms (string, int64, UUID, ...). It encodes
// as ["map",[[k,v],...]] with pairs sorted by key so that encoded
// transactions are deterministic and easy to compare in logs.
type Map map[any]any

// MarshalJSON implements json.Marshaler.
func (m Map) MarshalJSON() ([]byte, error) {
	keys := make([]any, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
	pairs := make([][2]any, 0, len(m))
	for _, k := range keys {
		pairs = append(pairs, [2]any{k, m[k]})
	}
	return json.Marshal([]any{"map", pairs})
}

// StringMap converts the common string-to-string map (external_ids,
// other_config, options) to a Map.
func StringMap(m map[string]string) Map {
	out := make(Map, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Condition is one element of a "where" clause: [column, function, value].
// Function is one of "<", "<=", "==", "!=", ">=", ">", "includes",
// "excludes".
type Condition struct {
	Column   string
	Function string
	Value    any
}

// MarshalJSON implements json.Marshaler.
func (c Condition) MarshalJSON() ([]byte, error) {
	return json.Marshal([3]any{c.Column, c.Function, c.Value})
}

// Cond builds a Condition.
func Cond(column, function string, value any) Condition {
	return Condition{Column: column, Function: function, Value: value}
}

// Eq is the most common condition, column == value.
func Eq(column string, value any) Condition { return Cond(column, "==", value) }

// Includes matches rows whose set or map column contains all of value; use
// it with a one-pair Map to find rows by one external_ids key.
func Includes(column string, value any) Condition { return Cond(column, "includes", value) }

// Mutation is one element of a mutate operation: [column, mutator, value].
// Mutator is one of "+=", "-=", "*=", "/=", "%=", "insert", "delete".
type Mutation struct {
	Column  string
	Mutator string
	Value   any
}

// MarshalJSON implements json.Marshaler.
func (m Mutation) MarshalJSON() ([]byte, error) {
	return json.Marshal([3]any{m.Column, m.Mutator, m.Value})
}

// Mut builds a Mutation for the Mutate operation.
func Mut(column, mutator string, value any) Mutation {
	return Mutation{Column: column, Mutator: mutator, Value: value}
}

// Operation is one RFC 7047 section 5.2 operation. Use the constructors
// (Insert, Select, ...) rather than filling it by hand: they set exactly the
// members each op requires.
type Operation struct {
	Op        string
	Table     string
	Row       Row
	Rows      []Row
	Where     []Condition
	Columns   []string
	Mutations []Mutation
	UUIDName  string
	Until     string
	// Timeout is the wait timeout in milliseconds; nil means wait forever.
	Timeout *int
	Comment string
}

// MarshalJSON emits only the members the op takes. "where" is always sent
// for ops that require it, because an omitted where is a syntax error while
// an empty one matches every row.
func (o Operation) MarshalJSON() ([]byte, error) {
	m := map[string]any{"op": o.Op}
	if o.Table != "" {
		m["table"] = o.Table
	}
	switch o.Op {
	case "select", "update", "mutate", "delete", "wait":
		where := o.Where
		if where == nil {
			where = []Condition{}
		}
		m["where"] = where
	}
	switch o.Op {
	case "insert", "update":
		row := o.Row
		if row == nil {
			row = Row{}
		}
		m["row"] = row
	}
	if o.Op == "wait" {
		cols, rows := o.Columns, o.Rows
		if cols == nil {
			cols = []string{}
		}
		if rows == nil {
			rows = []Row{}
		}
		m["columns"], m["rows"], m["until"] = cols, rows, o.Until
	} else if o.Columns != nil {
		m["columns"] = o.Columns
	}
	if o.Mutations != nil {
		m["mutations"] = o.Mutations
	}
	if o.UUIDName != "" {
		m["uuid-name"] = o.UUIDName
	}
	if o.Timeout != nil {
		m["timeout"] = *o.Timeout
	}
	if o.Op == "comment" {
		m["comment"] = o.Comment
	}
	return json.Marshal(m)
}

// Insert inserts row into table. A non-empty uuidName lets later operations
// of the same transaction refer to the new row as NamedUUID(uuidName).
func Insert(table, uuidName string, row Row) Operation {
	return Operation{Op: "insert", Table: table, UUIDName: uuidName, Row: row}
}

// Select returns the rows of table matching where; with no columns the
// server returns all columns (including _uuid and _version).
func Select(table string, where []Condition, columns ...string) Operation {
	return Operation{Op: "select", Table: table, Where: where, Columns: columns}
}

// Update sets the columns in row on every row of table matching where.
func Update(table string, where []Condition, row Row) Operation {
	return Operation{Op: "update", Table: table, Where: where, Row: row}
}

// Mutate applies mutations to every row of table matching where. It is the
// way to add to a set without reading it first, e.g. inserting a bridge into
// Open_vSwitch.bridges.
func Mutate(table string, where []Condition, mutations ...Mutation) Operation {
	return Operation{Op: "mutate", Table: table, Where: where, Mutations: mutations}
}

// Delete deletes the rows of table matching where.
func Delete(table string, where ...Condition) Operation {
	return Operation{Op: "delete", Table: table, Where: where}
}

// Wait makes the transaction proceed only if the given columns of the rows
// matching where are (until "==") or are not (until "!=") exactly rows. With
// timeout 0 it fails at once instead of waiting, which turns it into an
// optimistic-concurrency check; a negative timeout waits indefinitely.
func Wait(table string, timeout time.Duration, where []Condition, columns []string, until string, rows ...Row) Operation {
	op := Operation{Op: "wait", Table: table, Where: where, Columns: columns, Until: until, Rows: rows}
	if timeout >= 0 {
		ms := int(timeout / time.Millisecond)
		op.Timeout = &ms
	}
	return op
}

// Comment attaches text to the transaction in the database log, which helps
// tell netplugin's changes from others when debugging.
func Comment(text string) Operation {
	return Operation{Op: "comment", Comment: text}
}
