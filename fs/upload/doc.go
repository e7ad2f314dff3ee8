// Package upload holds the bytes of files written whole into the mount (a
// .npy, a .f32.npy view, __metadata__) until they are closed. It knows
// nothing of FUSE: fs opens a Buffer per open file, forwards writes,
// truncates and reads to it, and at a close hands what it holds to the
// layer that decides what those bytes become (Flush).
//
// A small upload is held in memory. One past Pool.SpillAt, or one that
// would take the uploads held in memory past Pool.Budget, moves to a
// private temp file: O_TMPFILE in Pool.Dir ($TMPDIR by default: no name
// anyone else could open, gone when closed; not the state directory,
// which is usually a tmpfs in RAM). So a sparse upload (truncate to 1 GiB,
// write a few bytes) costs a few pages, and many uploads at once cannot
// take the daemon's memory. The sizes of all open uploads together are
// capped at Pool.Limit: a close turns an upload into a tensor held in
// memory until it is logged.
//
// Errors say which rule was broken and carry the errno a writer should
// get (Errno): EFBIG past a limit, the temp file's own errno (ENOSPC,
// EIO) when spilling or writing it fails.
//
// Lock order: Set.mu, then Buffer.mu, then Pool.mu.
package upload
