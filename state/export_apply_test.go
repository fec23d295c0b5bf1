package state

// WithStepHook makes an apply report each of its journal's transactions to f
// ("plan" before the journal is written, "journal", "batch N", "undo N",
// "done"), so that tests can cut etcd at any point of it.
func WithStepHook(o ApplyOptions, f func(step string)) ApplyOptions {
	o.onStep = f
	return o
}
