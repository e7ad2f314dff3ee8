package checkpoint

import "errors"

var (
	// ErrNotFound: the tensor was deleted (or never existed).
	ErrNotFound = errors.New("no such tensor")
	// ErrReadOnly: the checkpoint was opened read-only.
	ErrReadOnly = errors.New("checkpoint is mounted read-only")
	// ErrExists: the key is already taken by another tensor.
	ErrExists = errors.New("key already exists")
	// ErrSize: bytes that do not fit the tensor's dtype and shape.
	ErrSize = errors.New("size does not match dtype and shape")
	// ErrInvalid: a key, dtype, shape or metadata the format cannot hold.
	ErrInvalid = errors.New("invalid value")
	// ErrChanged: someone else changed the checkpoint file while it was
	// mounted; edits went to a recovery file instead.
	ErrChanged = errors.New("checkpoint was changed by another program while mounted")
	// ErrPending: a log of edits waits to be written back (a read-only
	// open refuses the checkpoint until a read-write one finishes it).
	ErrPending = errors.New("edits are waiting in the log")
	// ErrNotDurable: an edit that a close commits could not be made
	// durable (it wraps what failed: ENOSPC, EIO...), so it was not made.
	ErrNotDurable = errors.New("the change could not be made durable, so it was not made")
	// ErrLinked: a checkpoint file with other hard links, which an
	// in-place write would change too.
	ErrLinked = errors.New("file has other hard links")
)
