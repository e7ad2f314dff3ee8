package checkpoint

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Times set through a mount (touch, cp -p, tar, rsync -a: utimensat on a
// tensor file or __metadata__) are kept across mounts in a file beside
// the checkpoint, since safetensors has no place for them: ".<main
// file>.safejaxfs-times" (the main file is the .safetensors file, or the
// index of a sharded set). Reference readers never see it; the checkpoint
// files stay byte for byte what the writer makes.
//
// It holds the time of everything that did not change (the checkpoint's
// when it was mounted), the tensors, directories and __metadata__ that
// show another, by key or path, and the header of each checkpoint file as
// it was when the times were saved (a SHA-256 of its first 8+N bytes). A mount applies it only when every
// file's header is still that one: a checkpoint written since by another
// program (a new layout, new keys, other dtypes) loses the times, never
// gets stale ones. (A program that changes tensor bytes in place, header
// untouched, and keeps this file goes unnoticed, as on any file system a
// writer that restores the mtime does: rsync -c compares contents.)
//
// The file is written after the write-back, as the checkpoint's log is:
// through the checkpoint's directory, never through a symlink, owned by
// the checkpoint's owner, replaced by rename. It is untrusted input: read
// with a size bound, parsed strictly, used only for times.
//
// This file is self-contained: Open and the edit paths know nothing of it.
// The FUSE layer opens it (Times) after Open, loads it, and saves it after
// Close.

// timesVersion is the format of the times file. Version 2 added the
// shards' times (a set whose files have different mtimes no longer names
// every tensor); version 1 files are still read.
const timesVersion = 2

// maxTimesFile bounds what LoadTimes reads: far above a 100k-tensor set's
// (about 10 MB), far below what could hurt.
const maxTimesFile = 64 << 20

// timesJSON is the times file's content.
type timesJSON struct {
	Version int               `json:"safejaxfs_times"`
	Headers map[string]string `json:"headers"`           // file name -> hex SHA-256 of its header
	Default string            `json:"default,omitempty"` // the time of everything not named below
	// Shards: the time of the tensors of each file not named below, where
	// it is not Default (a sharded set's files have their own mtimes).
	Shards   map[string]string `json:"shards,omitempty"`
	Tensors  map[string]string `json:"tensors"`            // key -> RFC 3339 time, ns
	Metadata string            `json:"metadata,omitempty"` // __metadata__'s time
	Dirs     map[string]string `json:"dirs,omitempty"`     // directory path in the mount -> time
	// MetadataRemoved: __metadata__ was removed (rm, rsync --delete) and
	// not written since; the header holds an empty one.
	MetadataRemoved bool `json:"metadata_removed,omitempty"`
}

// OtherTimes are the times kept beside the checkpoint that are not a
// tensor's: __metadata__'s (zero if none) and directories', by their
// slash-separated path in the mount.
type OtherTimes struct {
	// Default is the time of everything the times file does not name:
	// what the mount showed for what did not change.
	Default time.Time
	// Shards are the times of each file's tensors that did not change,
	// by file name, where not Default.
	Shards   map[string]time.Time
	Metadata time.Time
	Dirs     map[string]time.Time
	// MetadataRemoved keeps a removal of __metadata__ (rm, rsync
	// --delete) for the next mount, which shows none until one is
	// written: a second rsync --delete finds nothing to delete.
	MetadataRemoved bool
}

// TimesFile is the times file of one checkpoint, for the life of a mount:
// it holds its own descriptor of the checkpoint's directory, so it can be
// saved after Close.
type TimesFile struct {
	c      *Checkpoint
	dir    *cdir
	name   string   // the times file
	shards []string // the checkpoint's files
}

// Times opens the checkpoint's times file (nil, nil for a remote or
// foreign checkpoint: read-only, it keeps no times of its own). Close it
// when done.
func (c *Checkpoint) Times() (*TimesFile, error) {
	if c.root == nil {
		return nil, nil
	}
	fd, err := unix.Dup(c.root.fd())
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(fd)
	tf := &TimesFile{c: c, dir: &cdir{path: c.root.path, f: os.NewFile(uintptr(fd), c.root.path)}, name: sideName(c.mainName(), ".safejaxfs-times")}
	for _, sh := range c.shards {
		tf.shards = append(tf.shards, sh.name)
	}
	return tf, nil
}

// Close releases the directory.
func (tf *TimesFile) Close() {
	if tf != nil {
		tf.dir.close()
	}
}

// Load applies the times saved beside the checkpoint, if they were saved
// for the files as they are: every tensor gets the default time, each one
// named its own (as SetMTime gives it); the result says which tensors were
// named, and the other times kept. Nothing is applied, and no error returned, when there is no
// times file or it is for other files; an error says why a times file
// could not be used (the caller logs it).
func (tf *TimesFile) Load() (tensors map[ID]time.Time, other OtherTimes, err error) {
	if tf == nil {
		return nil, other, nil
	}
	f, err := tf.dir.open(tf.name, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, other, nil
	}
	if err != nil {
		return nil, other, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTimesFile+1))
	f.Close()
	if err != nil {
		return nil, other, fmt.Errorf("%s: %w", tf.dir.join(tf.name), err)
	}
	if len(b) > maxTimesFile {
		return nil, other, fmt.Errorf("%s: larger than %d bytes: ignored", tf.dir.join(tf.name), maxTimesFile)
	}
	var j timesJSON
	if err := json.Unmarshal(b, &j); err != nil || (j.Version != timesVersion && j.Version != 1) {
		return nil, other, fmt.Errorf("%s: not a times file of this version (%v): ignored", tf.dir.join(tf.name), err)
	}
	headers, err := tf.headerHashes()
	if err != nil {
		return nil, other, err
	}
	if len(j.Headers) != len(headers) {
		return nil, other, nil // saved for another set of files
	}
	for n, h := range headers {
		if j.Headers[n] != h {
			return nil, other, nil // the file changed since
		}
	}
	c := tf.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if j.Default != "" {
		if other.Default, err = time.Parse(time.RFC3339Nano, j.Default); err != nil {
			return nil, OtherTimes{}, fmt.Errorf("%s: default time %q: %v: ignored", tf.dir.join(tf.name), j.Default, err)
		}
	}
	for name, v := range j.Shards {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return nil, OtherTimes{}, fmt.Errorf("%s: time %q of %s: %v: ignored", tf.dir.join(tf.name), v, name, err)
		}
		if other.Shards == nil {
			other.Shards = map[string]time.Time{}
		}
		other.Shards[name] = t
	}
	// Every tensor shows its file's time, else the default; those named
	// below their own.
	if j.Default != "" || len(j.Shards) > 0 {
		def := nanos(other.Default)
		for _, t := range c.tensors {
			if t == nil {
				continue
			}
			if st, ok := other.Shards[c.shards[t.shard].name]; ok {
				t.mtime = nanos(st)
			} else if j.Default != "" {
				t.mtime = def
			}
		}
	}
	tensors = make(map[ID]time.Time, len(j.Tensors))
	for key, v := range j.Tensors {
		id, ok := c.byKey[key]
		t, perr := time.Parse(time.RFC3339Nano, v)
		if !ok || perr != nil {
			continue
		}
		c.tensors[id].mtime = nanos(t)
		tensors[id] = t
	}
	if j.Metadata != "" {
		other.Metadata, _ = time.Parse(time.RFC3339Nano, j.Metadata)
	}
	other.MetadataRemoved = j.MetadataRemoved
	for p, v := range j.Dirs {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			if other.Dirs == nil {
				other.Dirs = map[string]time.Time{}
			}
			other.Dirs[p] = t
		}
	}
	return tensors, other, nil
}

// Save keeps tensors' times (by ID) and the others beside the checkpoint,
// for the files as they are now: call it after the checkpoint's Close has
// written everything back. With no times to keep, a times file left by an
// earlier mount is removed (it would no longer match).
func (tf *TimesFile) Save(tensors map[ID]time.Time, other OtherTimes) error {
	if tf == nil || tf.c.readOnly {
		return nil
	}
	if tf.implied(tensors, other) {
		if err := tf.dir.remove(tf.name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	headers, err := tf.headerHashes()
	if err != nil {
		return err
	}
	j := timesJSON{Version: timesVersion, Headers: headers, Tensors: make(map[string]string, len(tensors))}
	c := tf.c
	c.mu.RLock()
	for id, t := range tensors {
		if tt := c.get(id); tt != nil {
			j.Tensors[tt.key] = t.UTC().Format(time.RFC3339Nano)
		}
	}
	c.mu.RUnlock()
	if !other.Default.IsZero() {
		j.Default = other.Default.UTC().Format(time.RFC3339Nano)
	}
	if !other.Metadata.IsZero() {
		j.Metadata = other.Metadata.UTC().Format(time.RFC3339Nano)
	}
	j.MetadataRemoved = other.MetadataRemoved
	for name, t := range other.Shards {
		if j.Shards == nil {
			j.Shards = map[string]string{}
		}
		j.Shards[name] = t.UTC().Format(time.RFC3339Nano)
	}
	for p, t := range other.Dirs {
		if j.Dirs == nil {
			j.Dirs = map[string]string{}
		}
		j.Dirs[p] = t.UTC().Format(time.RFC3339Nano)
	}
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	tmp := tf.name + ".tmp"
	if err := tf.dir.remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := tf.dir.open(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
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
	if err == nil && os.Geteuid() == 0 {
		// Owned by the checkpoint's owner, as the log is.
		if st, serr := tf.dir.lstat(tf.shards[0]); serr == nil {
			err = tf.dir.chown(tmp, &st)
		}
	}
	if err == nil {
		err = tf.dir.rename(tmp, tf.name)
	}
	if err != nil {
		tf.dir.remove(tmp)
		return fmt.Errorf("keeping the times set through the mount in %s: %w", tf.dir.join(tf.name), err)
	}
	return tf.dir.syncDirOf(tf.name)
}

// implied reports whether the times say nothing the files do not: a mount
// without a times file shows each tensor its file's mtime, and everything
// else the checkpoint's (the index's, in a sharded set). Then no times file
// is kept, and one kept before is removed: a mount that changed nothing
// leaves nothing beside the checkpoint, and the next mount hashes no
// headers to check one (14 MB for DeepSeek-V3's 163 files).
func (tf *TimesFile) implied(tensors map[ID]time.Time, other OtherTimes) bool {
	if len(tensors) > 0 || !other.Metadata.IsZero() || len(other.Dirs) > 0 || other.MetadataRemoved {
		return false
	}
	if other.Default.IsZero() {
		return true
	}
	mtimeIs := func(name string, want time.Time) bool {
		st, err := tf.dir.lstat(name)
		return err == nil && time.Unix(st.Mtim.Sec, st.Mtim.Nsec).Equal(want)
	}
	if !mtimeIs(tf.c.mainName(), other.Default) {
		return false
	}
	for _, name := range tf.shards {
		want, ok := other.Shards[name]
		if !ok {
			want = other.Default
		}
		if !mtimeIs(name, want) {
			return false
		}
	}
	return true
}

// headerHashes is the SHA-256 of each checkpoint file's header (its first
// 8+N bytes), by file name, read from the files as they are.
func (tf *TimesFile) headerHashes() (map[string]string, error) {
	out := make(map[string]string, len(tf.shards))
	for _, name := range tf.shards {
		f, err := tf.dir.open(name, os.O_RDONLY, 0)
		if err != nil {
			return nil, err
		}
		h, err := headerHash(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tf.dir.join(name), err)
		}
		out[name] = h
	}
	return out, nil
}

func headerHash(f *os.File) (string, error) {
	var n [8]byte
	if _, err := f.ReadAt(n[:], 0); err != nil {
		return "", err
	}
	hlen := binary.LittleEndian.Uint64(n[:])
	if hlen > safetensors.MaxHeaderSize {
		return "", fmt.Errorf("header length %d above the limit", hlen)
	}
	h := sha256.New()
	h.Write(n[:])
	if _, err := io.Copy(h, io.NewSectionReader(f, 8, int64(hlen))); err != nil {
		return "", err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Size < 8+int64(hlen) {
		return "", io.ErrUnexpectedEOF
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
