package checkpoint

// crashHooks lets tests simulate a crash at named points. When at returns
// an error, the operation returns it at once, leaving the files exactly as
// a crash there would (descriptors it opened are closed by the test's
// abandon, as the kernel does at exit).
//
// Commits (wal.go): "log-written" (a batch written, not synced),
// "log-synced" (the batch durable). Compaction (compact.go, rewrite.go):
// "tmp-written" (a new file written, not synced), "tmp-synced" (all new
// files durable and valid), then its compact record passes "log-written"
// and "log-synced" (the commit point), "renamed" (after each rename),
// "patch-written" (after each shard patched in place, before its sync),
// "patched" (every shard patched and synced), "compacted" (before the log
// is removed).
type crashHooks struct {
	at   func(point string) error
	last error // the last error at returned: what isCrash recognises
}

func (h *crashHooks) hit(point string) error {
	if h == nil || h.at == nil {
		return nil
	}
	err := h.at(point)
	if err != nil {
		h.last = err
	}
	return err
}
