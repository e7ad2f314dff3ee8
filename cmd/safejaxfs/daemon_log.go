package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// A daemon in the background has no terminal, yet the reasons it refused
// an edit or failed a write-back are what the user needs. It appends them
// to a log file in its state directory, one per mountpoint:
//
//	$XDG_RUNTIME_DIR/safejaxfs/<mountpoint>.log
//
// falling back to /run/user/<uid>/safejaxfs, then $TMPDIR/safejaxfs-<uid>
// (root without a runtime dir: /run/safejaxfs). The mount root's
// user.safejaxfs.log attribute names it. The same directory is where edits
// go as a last resort when the checkpoint's own directory cannot take a
// recovery file.

// stateDir is the daemon's directory for logs and last-resort recovery
// files, created 0700 if missing.
func stateDir() (string, error) {
	var candidates []string
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		candidates = append(candidates, filepath.Join(d, "safejaxfs"))
	}
	uid := os.Getuid()
	if uid == 0 {
		candidates = append(candidates, "/run/safejaxfs")
	} else if st, err := os.Stat(fmt.Sprintf("/run/user/%d", uid)); err == nil && st.IsDir() {
		candidates = append(candidates, fmt.Sprintf("/run/user/%d/safejaxfs", uid))
	}
	candidates = append(candidates, filepath.Join(os.TempDir(), fmt.Sprintf("safejaxfs-%d", uid)))
	var first error
	for _, d := range candidates {
		if err := os.MkdirAll(d, 0o700); err == nil {
			return d, nil
		} else if first == nil {
			first = err
		}
	}
	return "", first
}

// logName is the log file's name for a mountpoint: its absolute path with
// "/" as "%" ("%tmp%m.log" for /tmp/m), or a hash when that is too long.
func logName(mnt string) string {
	name := strings.ReplaceAll(mnt, "%", "%25")
	name = strings.ReplaceAll(name, "/", "%")
	if len(name) > 200 {
		sum := sha256.Sum256([]byte(mnt))
		name = name[len(name)-150:] + "-" + hex.EncodeToString(sum[:8])
	}
	return name + ".log"
}

// maxLogSize bounds the log: past it, a new daemon starts it afresh (the
// previous one is kept as .old).
const maxLogSize = 1 << 20

// openLog opens (appending) the log file for mountpoint mnt in dir.
func openLog(dir, mnt string) (*os.File, string, error) {
	p := filepath.Join(dir, logName(mnt))
	if st, err := os.Stat(p); err == nil && st.Size() > maxLogSize {
		os.Rename(p, p+".old")
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, "", err
	}
	return f, p, nil
}
