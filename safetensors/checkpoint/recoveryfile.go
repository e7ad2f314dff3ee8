package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Recovery files hold a mount's edits when the checkpoint cannot take
// them: someone else changed it while it was mounted (theirs must not be
// overwritten, ours must not be lost), or it cannot be written at all.
//
// A recovery file never mixes versions. Unchanged tensors are read from
// this mount's mapping of the checkpoint; if another program replaced the
// file (a new inode), the mapping still shows the file as it was, and the
// recovery file is the mount's whole state. If another program wrote into
// the same file in place, the mapping shows their bytes, not the ones the
// mount began with: then only tensors whose bytes are wholly this mount's
// (created or rewritten whole) are saved, and the error names the rest.

// writeRecovery saves the snapshot next to the checkpoint. A plain
// checkpoint goes to one recovery file; a sharded one to a recovery
// directory next to the index holding the index and every shard: shards
// this mount changed (or that changed on disk) are written whole, the
// others are symlinks to the originals. The path is returned with what
// could not be saved without mixing versions (see above): nil unless
// another program wrote into the checkpoint in place.
func (c *Checkpoint) writeRecovery(s *snapshot) (string, *lostEdits, error) {
	return c.writeRecoveryIn(s, "")
}

// lostEdits names the edited tensors a recovery file could not hold.
type lostEdits struct{ keys []string }

func (l *lostEdits) String() string {
	if l == nil || len(l.keys) == 0 {
		return ""
	}
	return fmt.Sprintf("; it holds only the tensors this mount wrote whole: another program wrote into the checkpoint in place, so the unedited bytes of %s (edited here in part) are no longer known, and they were left out rather than mixed with its bytes", strings.Join(l.keys, ", "))
}

// writeRecoveryIn is writeRecovery into the directory in ("": next to the
// checkpoint; else a directory of the caller's, trusted as given).
func (c *Checkpoint) writeRecoveryIn(s *snapshot, in string) (string, *lostEdits, error) {
	d := c.root
	if in != "" {
		var err error
		if d, err = openDir(in); err != nil {
			return "", nil, err
		}
		defer d.close()
	}
	tainted, lost := c.taint(s)
	var owner *unix.Stat_t
	if st, err := c.root.lstat(c.shards[0].name); err == nil {
		owner = &st
	}
	if c.index == nil {
		ss := &s.shards[0]
		_, base := splitName(c.shards[0].name)
		p, err := writeRecoveryFile(d, base, "", sources(keep(ss.tensors, tainted[0])), ss.meta, owner, c.hooks)
		return p, lost, err
	}
	_, base := splitName(c.index.name)
	stem := strings.TrimSuffix(base, safetensors.IndexSuffix)
	out, err := mkdirFresh(d, stem+".safejaxfs-recovered-"+time.Now().Format("20060102-150405"), owner)
	if err != nil {
		return "", nil, err
	}
	for i, sh := range c.shards {
		ss := &s.shards[i]
		dst := out + "/" + sh.name
		if dir, _ := splitName(dst); dir != out+"/" {
			if err := mkdirAll(d, strings.TrimSuffix(dir, "/"), owner); err != nil {
				return "", nil, err
			}
		}
		if !ss.dirty && tainted[i] == nil && sh.unchangedOnDisk(c.root) {
			if err := d.symlink(c.root.join(sh.name), dst); err != nil {
				return "", nil, err
			}
			continue
		}
		if _, err := writeRecoveryFile(d, "", dst, sources(keep(ss.tensors, tainted[i])), ss.meta, owner, c.hooks); err != nil {
			return "", nil, err
		}
	}
	b, err := c.renderIndex(s)
	if err != nil {
		return "", nil, err
	}
	f, err := d.open(out+"/"+base, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", nil, err
	}
	if owner != nil && os.Geteuid() == 0 {
		control(f, func(fd int) error { return unix.Fchown(fd, int(owner.Uid), int(owner.Gid)) })
	}
	_, werr := f.Write(b)
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		return "", nil, werr
	}
	if err := d.syncDirOf(out + "/" + base); err != nil {
		return "", nil, err
	}
	if err := d.syncDirOf(out); err != nil {
		return "", nil, err
	}
	return d.join(out), lost, nil
}

// taint finds the shards another program wrote into in place (the file at
// the shard's name is the inode we map, and it changed): for each, the
// mapping whose bytes are no longer the checkpoint's, and the keys of the
// edited tensors that read from it (unedited ones lose nothing of ours).
func (c *Checkpoint) taint(s *snapshot) (tainted []*mapping, lost *lostEdits) {
	tainted = make([]*mapping, len(c.shards))
	for i, sh := range c.shards {
		m := sh.cur
		if m == nil || m.file == nil {
			continue
		}
		now, err := identityAt(c.root, sh.name)
		mst, merr := fstat(m.file.Fd())
		if err != nil || merr != nil || now.dev != uint64(mst.Dev) || now.ino != mst.Ino {
			continue // replaced, or gone: our mapping is of a file nobody changes
		}
		if now.same(sh.ident) {
			continue
		}
		tainted[i] = m
		for _, st := range s.shards[i].tensors {
			if readsFrom(st.data, m) && !st.data.clean() {
				if lost == nil {
					lost = &lostEdits{}
				}
				lost.keys = append(lost.keys, fmt.Sprintf("%q", st.key))
			}
		}
	}
	return tainted, lost
}

// keep is ts without the tensors that read from m (all of them if m is
// nil).
func keep(ts []snapTensor, m *mapping) []snapTensor {
	if m == nil {
		return ts
	}
	return slices.DeleteFunc(slices.Clone(ts), func(st snapTensor) bool { return readsFrom(st.data, m) })
}

// readsFrom reports whether some byte of ct may come from mapping m: it
// reads from it, or copied a chunk of it when first written (a chunk
// copied after another program wrote into the file holds their bytes).
func readsFrom(ct *content, m *mapping) bool {
	return ct.ref == m && len(ct.base) > 0
}

// mkdirFresh creates directory name below d, or name-2, name-3... if
// taken, owned as owner when running as root.
func mkdirFresh(d *cdir, name string, owner *unix.Stat_t) (string, error) {
	for i := 1; ; i++ {
		n := name
		if i > 1 {
			n = fmt.Sprintf("%s-%d", name, i)
		}
		err := d.mkdir(n, 0o755)
		if err == nil {
			if owner != nil && os.Geteuid() == 0 {
				d.chown(n, owner)
			}
			return n, nil
		}
		if !errors.Is(err, fs.ErrExist) || i >= 1000 {
			return "", err
		}
	}
}

// mkdirAll creates directory name and its parents below d.
func mkdirAll(d *cdir, name string, owner *unix.Stat_t) error {
	if name == "" || name == "." || d.exists(name) {
		return nil
	}
	if err := mkdirAll(d, path.Dir(name), owner); err != nil {
		return err
	}
	if err := d.mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if owner != nil && os.Geteuid() == 0 {
		d.chown(name, owner)
	}
	return nil
}

// writeRecoveryFile writes the canonical file for sources and metadata to
// dst below d, or when dst is "" to
// "<stem>.safejaxfs-recovered-<YYYYmmdd-HHMMSS>.safetensors" below d, stem
// being near without ".safetensors" (local time; "-2", "-3"... before
// ".safetensors" if taken), and returns its path. It goes through a temp
// file, is synced and validated before it gets its name (never over an
// existing file), so a file with that name is always complete. owner (nil:
// ours) is whose the checkpoint is: the file gets its permission bits, and
// as root its owner.
func writeRecoveryFile(d *cdir, near, dst string, sources []safetensors.Source, metadata map[string]string, owner *unix.Stat_t, h *crashHooks) (path string, err error) {
	perm := uint32(0o644)
	if owner != nil {
		perm = owner.Mode & 0o777
	}
	target := near
	if dst != "" {
		target = dst
	}
	tmp, name, err := createTemp(d, target, perm, owner, h)
	if err != nil {
		return "", err
	}
	defer func() {
		tmp.Close()
		if err != nil {
			d.remove(name)
		}
	}()
	if err := h.sys(opWrite, name); err != nil {
		return "", err
	}
	n, err := safetensors.Write(tmp, sources, metadata)
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", d.join(name), err)
	}
	if err = syncFile(tmp, name, h); err != nil {
		return "", err
	}
	if _, err = safetensors.ReadHeader(tmp, n); err != nil {
		return "", fmt.Errorf("the recovery file does not validate: %w", err)
	}
	if dst != "" {
		if err = d.renameNoReplace(name, dst); err != nil {
			return "", err
		}
		return d.join(dst), nil
	}
	stem := strings.TrimSuffix(near, ".safetensors")
	stamp := time.Now().Format("20060102-150405")
	for i := 1; ; i++ {
		suffix := ""
		if i > 1 {
			suffix = fmt.Sprintf("-%d", i)
		}
		p := stem + ".safejaxfs-recovered-" + stamp + suffix + ".safetensors"
		err = d.renameNoReplace(name, p)
		if err == nil {
			return d.join(p), d.syncDirOf(p)
		}
		if !errors.Is(err, fs.ErrExist) || i >= 1000 {
			return "", err
		}
	}
}
