package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// A rewrite that replaces several files (shards and the index of a sharded
// checkpoint) commits through a record, ".<index>.safejaxfs-commit" next to
// the index, that lists every rename still to do: temp file -> final name,
// with the temp file's device and inode. replaceFiles writes it (through a
// temp file, fsync, rename, directory fsync) once every temp file is
// durable and valid; that is the commit point. Then it renames, syncs the
// directories and removes the record.
//
// finishCommit, at the next read-write open, rolls a record forward: a
// temp file still there (with the recorded inode) is renamed over its
// final name; a final name that already has the recorded inode is done.
// Every crash point therefore has one answer: before the record, the old
// files (the temp files are stale and removed); after it, the new ones.
// The record is written whole or not at all (rename), so it is never torn.

const commitSuffix = ".safejaxfs-commit"

const commitVersion = 1

type commitRecord struct {
	Version int            `json:"version"`
	Renames []commitRename `json:"renames"`
}

type commitRename struct {
	From string `json:"from"` // absolute temp file path
	To   string `json:"to"`   // absolute final path (symlinks resolved)
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// commitPath is where a commit record of this checkpoint goes ("" for a
// plain checkpoint, whose rewrite is one rename and needs none).
func (c *Checkpoint) commitPath() string {
	if c.index == nil {
		return ""
	}
	return commitPathOf(c.index.path)
}

func commitPathOf(index string) string {
	if r, err := realPath(index); err == nil {
		index = r
	}
	return sidePath(index, commitSuffix)
}

// writeCommit makes the record of reps' renames durable at at.
func writeCommit(at string, reps []*replacement) error {
	rec := commitRecord{Version: commitVersion}
	for _, r := range reps {
		rec.Renames = append(rec.Renames, commitRename{From: r.tmpName, To: r.real, Dev: uint64(r.tst.Dev), Ino: r.tst.Ino})
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	// Named as a temp file of the index, so cleanStaleTemps removes it
	// if a crash leaves it half written.
	dir, base := filepath.Split(at)
	index := filepath.Join(dir, strings.TrimSuffix(strings.TrimPrefix(base, "."), commitSuffix))
	f, name, err := createTemp(index, 0o600, nil)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, at)
	}
	if err == nil {
		err = syncDir(filepath.Dir(at))
	}
	if err != nil {
		os.Remove(name)
		os.Remove(at)
		return fmt.Errorf("writing the commit record %s: %w", at, err)
	}
	return nil
}

// finishCommit rolls forward the commit record of the sharded checkpoint
// whose index is index, if there is one, and removes it. done reports that
// a record was found and finished. The caller holds the set's lock.
func finishCommit(index string) (done bool, err error) {
	at := commitPathOf(index)
	b, err := os.ReadFile(at)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var rec commitRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.Version != commitVersion {
		// Written whole by rename, so never torn: a record we cannot read
		// is another version's. Keep it aside, do not guess.
		return false, setAside(at, index, fmt.Sprintf("commit record version %d is not one this safejaxfs reads", rec.Version))
	}
	dirs := map[string]bool{}
	for _, r := range rec.Renames {
		var st unix.Stat_t
		if err := unix.Lstat(r.From, &st); err == nil {
			if uint64(st.Dev) != r.Dev || st.Ino != r.Ino {
				return false, fmt.Errorf("%s: the commit record %s names %s, but that is another file now; it was left as it is", index, at, r.From)
			}
			if err := os.Rename(r.From, r.To); err != nil {
				return false, fmt.Errorf("%s: finishing an interrupted commit: %w", index, err)
			}
		} else if err := unix.Stat(r.To, &st); err != nil || uint64(st.Dev) != r.Dev || st.Ino != r.Ino {
			return false, fmt.Errorf("%s: the commit record %s cannot be finished: neither %s nor its result %s is there; it was left as it is", index, at, r.From, r.To)
		}
		dirs[filepath.Dir(r.To)] = true
	}
	for d := range dirs {
		if err := syncDir(d); err != nil {
			return false, err
		}
	}
	return true, removeSynced(at)
}

// pendingCommit reports a commit record left next to loc's index.
func pendingCommit(loc *safetensors.Location) (string, bool) {
	if !loc.Sharded() {
		return "", false
	}
	p := commitPathOf(loc.Index)
	return p, exists(p)
}
