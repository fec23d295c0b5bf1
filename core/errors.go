package core

import "errors"

// Sentinels callers check with errors.Is; messages carry the specifics.
var (
	ErrInvalid     = errors.New("invalid")
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInUse       = errors.New("in use")
	ErrUnavailable = errors.New("store unavailable")
)
