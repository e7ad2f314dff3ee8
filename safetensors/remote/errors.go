package remote

import (
	"errors"
	"fmt"
	"net/http"
)

// Errors a caller can test with errors.Is. Every error from this package is
// an *Error naming the object (in its display form, without credentials) and
// wrapping one of these or the underlying network error.
var (
	// ErrChanged: the object's ETag, size or commit is no longer the one it
	// was opened at. Its reads fail rather than mix two versions.
	ErrChanged = errors.New("the object changed since it was opened")
	// ErrNotFound: the server answered 404.
	ErrNotFound = errors.New("not found")
	// ErrDenied: the server answered 401 or 403.
	ErrDenied = errors.New("access denied")
	// ErrNoRanges: the server does not serve byte ranges, so the object
	// cannot be read lazily.
	ErrNoRanges = errors.New("the server does not serve byte ranges")
	// ErrBadURL: the URL is not one Open understands.
	ErrBadURL = errors.New("unsupported URL")
	// ErrBadResponse: the server sent something other than what was asked
	// (wrong Content-Range, short body after every retry).
	ErrBadResponse = errors.New("unexpected response")
	// ErrClosed: the Object was closed.
	ErrClosed = errors.New("object is closed")
	// ErrUnversioned: the server sends neither ETag nor Last-Modified, so a
	// change to the file that keeps its size and header could not be told
	// from the version opened (Options.AllowUnversioned accepts it).
	ErrUnversioned = errors.New("the server sends neither ETag nor Last-Modified: a change to the file could not be detected, and reads could mix two versions")
	// ErrEncoded: the server sent the bytes with a Content-Encoding (gzip,
	// br, ...) though identity was asked for: they are not the file's.
	ErrEncoded = errors.New("the server sent an encoded body, not the file's bytes")
)

// Error is a failed operation on a remote object.
type Error struct {
	Op     string // "GET", "open", "header", "read", ...
	URL    string // display form: never credentials or signed query strings
	Range  string // "bytes=a-b" when the request had one
	Status int    // HTTP status of the last attempt; 0 if none arrived
	Err    error
}

func (e *Error) Error() string {
	s := "remote: " + e.Op + " " + e.URL
	if e.Range != "" {
		s += " " + e.Range
	}
	if e.Status != 0 {
		s += fmt.Sprintf(": %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

func badURLf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadURL}, a...)...)
}
