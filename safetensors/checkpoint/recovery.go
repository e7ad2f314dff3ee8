package checkpoint

import (
	"errors"
	"fmt"
	"os"
)

// When edits cannot be written back (a full disk, a read-only or vanished
// directory), they must still not be lost: SaveRecovery writes the mount's
// whole state to a recovery file, next to the checkpoint if it can, else
// in one of the directories the caller offers (the daemon's own
// directory, the temp directory). The checkpoint itself is not touched.

// SaveRecovery writes every edit, persisted or not, to
// "<stem>.safejaxfs-recovered-<time>.safetensors" next to the checkpoint,
// else in the first of dirs that takes it, and says where (the file's path,
// with what it could not hold: see writeRecovery). When the log already
// holds every edit, nothing is written and it names the log and what to do
// with it. Nothing is written either when the last recovery file already
// holds the current state. The error names every place tried.
func (c *Checkpoint) SaveRecovery(dirs ...string) (string, error) {
	if c.readOnly {
		return "", ErrReadOnly
	}
	c.mu.RLock()
	diverted, p := c.recovery != "" && c.recoveredEdits == c.edits, c.recovery
	c.mu.RUnlock()
	if diverted {
		// Another program changed the checkpoint and every edit went to
		// this recovery file: the log applies only to the files as they
		// were (the mount sets it aside when it ends).
		return p, nil
	}
	if p := c.loggedAll(); p != "" {
		// Every edit is durable in the log already: that is where they
		// are, and the next read-write open writes them back. It is not
		// a checkpoint of its own (it applies only to these files as
		// they are), so it is named for what it is, with what to do; a
		// whole copy of the checkpoint is not written into the caller's
		// directories, which may be small (a tmpfs in memory).
		return fmt.Sprintf("the log %s, which applies only to %s as it is now: run safejaxfs recover %s once there is room (keep the log next to the checkpoint; move or copy them together, never one without the other)", p, c.path, c.path), nil
	}
	s := c.snapshot()
	defer s.release()
	c.mu.RLock()
	last, lastEdits := c.rescued, c.rescuedEdits
	if c.recovery != "" && c.recoveredEdits == s.edits {
		// Sync already diverted this state to a recovery file.
		last, lastEdits = c.recovery, c.recoveredEdits
	}
	c.mu.RUnlock()
	if last != "" && lastEdits == s.edits {
		return last, nil
	}
	if err := s.check(); err != nil {
		return "", err
	}
	var errs []error
	for i, dir := range append([]string{""}, dirs...) {
		if i > 0 {
			// The caller's directories may have been cleaned away.
			os.MkdirAll(dir, 0o700)
		}
		p, lost, err := c.writeRecoveryIn(s, dir)
		if err == nil {
			c.mu.Lock()
			c.rescued, c.rescuedEdits = p, s.edits
			c.mu.Unlock()
			return p + lost.String(), nil
		}
		if dir == "" {
			dir = "next to the checkpoint"
		}
		errs = append(errs, fmt.Errorf("in %s: %w", dir, err))
	}
	return "", fmt.Errorf("saving the edits of %s to a recovery file failed: %w", c.path, errors.Join(errs...))
}

// Unsaved reports whether there are edits that neither the checkpoint, its
// log nor a recovery file holds.
func (c *Checkpoint) Unsaved() bool {
	if c.readOnly {
		return false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.rescued != "" && c.rescuedEdits == c.edits || c.recovery != "" && c.recoveredEdits == c.edits {
		return false
	}
	// What the log holds is saved: the next read-write open writes it back.
	return len(c.dirty) > 0 || len(c.gone) > 0 || c.metaUnlogged()
}

// Abandon releases the files and mappings without persisting anything:
// for a daemon whose edits went to a recovery file because the checkpoint
// could not take them. The log stays for the next read-write mount to
// finish.
func (c *Checkpoint) Abandon() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.releaseAll()
}

// loggedAll returns the log's path if it holds every edit (nothing is
// waiting to be committed), else "".
func (c *Checkpoint) loggedAll() string {
	c.persistMu.Lock()
	defer c.persistMu.Unlock()
	if c.wal == nil || c.hasUnlogged() {
		return ""
	}
	return c.wal.path
}
