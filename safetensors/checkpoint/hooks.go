package checkpoint

import "fmt"

// crashHooks lets tests simulate a crash at named points, and make a
// system call of persistence fail as the kernel would. Only tests set
// them; a nil *crashHooks does nothing.
//
// Crash points: when at returns an error, the operation returns it at
// once, leaving the files exactly as a crash there would (descriptors it
// opened are closed by the test's abandon, as the kernel does at exit).
//
// Commits (wal.go): "log-written" (a batch written, not synced),
// "log-synced" (the batch durable). Compaction (compact.go, rewrite.go):
// "tmp-written" (a new file written, not synced), "tmp-synced" (all new
// files durable and valid), then its compact record passes "log-written"
// and "log-synced" (the commit point), "renamed" (after each rename),
// "copied" (after each file installed by copying in place, before its
// sync), "patch-written" (after each shard patched in place, before its
// sync), "patched" (every shard patched and synced), "compacted" (before
// the log is removed). Recovery (recover.go): "log-checked" (a crash's
// log found ours and scanned, before it is opened again to replay or
// finish it).
//
// Faults: before each system call that persistence makes, fail(op, name)
// may return an error to return instead of making the call, so tests
// inject ENOSPC, EIO, EBUSY, EXDEV... at every step and check that what
// follows is what a real failure there would get (see sysOps). name is
// the file's name below the checkpoint's directory.
type crashHooks struct {
	at   func(point string) error
	fail func(op, name string) error
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

// The operations fail is asked about.
const (
	opCreate   = "create"   // a temp file, a log, a recovery file
	opWrite    = "write"    // bytes written into a file
	opSync     = "sync"     // fsync/fdatasync of a file
	opSyncDir  = "syncdir"  // fsync of a directory
	opRename   = "rename"   // a temp file renamed into place (name: the target)
	opRemove   = "remove"   // a log or temp file removed
	opTruncate = "truncate" // a file cut to size
)

// sys asks whether op on name must fail (tests); nil means make the call.
func (h *crashHooks) sys(op, name string) error {
	if h == nil || h.fail == nil {
		return nil
	}
	if err := h.fail(op, name); err != nil {
		return fmt.Errorf("%s %s: %w", op, name, err)
	}
	return nil
}
