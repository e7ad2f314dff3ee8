package fs

// LastError is the last write-back failure or refused edit the root's
// user.safejaxfs.error shows ("" for none), for the daemon's status.
func (f *FS) LastError() string {
	if msg := f.lastErr.Load(); msg != nil {
		return *msg
	}
	return ""
}
