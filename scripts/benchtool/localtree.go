package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// localTree is section 6's reference: the mounted tree recreated as empty
// files on a local file system. As root it lives in an ext4 image that is
// mounted afresh for each measurement, so the first run of a command finds
// the kernel's dentry and inode caches cold, as the first run over a fresh
// safejaxfs mount does (the image's blocks are in the page cache, as the
// checkpoint's are). Otherwise it is a plain directory, cached only.
type localTree struct {
	what  string // for the table
	dir   string // the tree's root (the image's mountpoint)
	image string // "" for a plain directory
	note  string // why there is no cold reference
}

// makeLocalTree mirrors the tree under src.
func (b *bench) makeLocalTree(src string, tensors int) (*localTree, error) {
	t, err := b.imageTree(src, tensors)
	if err == nil {
		return t, nil
	}
	t = &localTree{
		what: "local disk",
		dir:  filepath.Join(b.work, "local-tree"),
		note: fmt.Sprintf("no cold local reference (%v): the local tree is a plain directory, measured cached", err),
	}
	return t, mirror(src, t.dir)
}

// imageTree makes the ext4 image: room for twice as many inodes as tensors
// (a directory per key prefix at most), blocks for the directories.
func (b *bench) imageTree(src string, tensors int) (*localTree, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("mounting an ext4 image needs root")
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return nil, err
	}
	t := &localTree{
		what:  "local ext4 (an image on the bench disk, loop-mounted)",
		dir:   filepath.Join(b.work, "local-tree"),
		image: filepath.Join(b.work, "local-tree.ext4"),
	}
	if err := os.Mkdir(t.dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(t.image)
	if err != nil {
		return nil, err
	}
	size := int64(64<<20) + int64(tensors)*(8<<10)
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return nil, err
	}
	if err := run(mkfs, "-q", "-F", "-N", fmt.Sprint(2*tensors+1024), t.image); err != nil {
		return nil, err
	}
	if err := t.mount(b, false); err != nil {
		return nil, err
	}
	err = mirror(src, t.dir)
	if uerr := t.unmount(b); err == nil {
		err = uerr
	}
	if err != nil {
		return nil, err
	}
	return t, nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// mount loop-mounts the image (read-only for measurements: listing a
// directory would otherwise write its atime). It is registered with the
// bench's mounts, so an interrupted run unmounts it too.
func (t *localTree) mount(b *bench, readOnly bool) error {
	opts := "loop"
	if readOnly {
		opts += ",ro"
	}
	b.mu.Lock()
	if b.mounts == nil {
		b.mounts = map[string]bool{}
	}
	b.mounts[t.dir] = true
	b.mu.Unlock()
	return run("mount", "-o", opts, t.image, t.dir)
}

func (t *localTree) unmount(b *bench) error {
	err := run("umount", t.dir)
	if err == nil {
		b.mu.Lock()
		delete(b.mounts, t.dir)
		b.mu.Unlock()
	}
	return err
}

// run times c over the tree: cold (freshly mounted; 0 for a plain
// directory) and hot (again; after an untimed warm-up run for a plain
// directory). out is what the hot run printed.
func (t *localTree) run(b *bench, c listCmd) (cold, hot time.Duration, out string, err error) {
	if t.image == "" {
		if _, _, err = c.run(t.dir); err != nil {
			return 0, 0, "", err
		}
		hot, out, err = c.run(t.dir)
		return 0, hot, out, err
	}
	if err := b.ensureCached(t.image); err != nil {
		return 0, 0, "", err
	}
	if err := t.mount(b, true); err != nil {
		return 0, 0, "", err
	}
	defer func() {
		if uerr := t.unmount(b); err == nil {
			err = uerr
		}
	}()
	if cold, _, err = c.run(t.dir); err != nil {
		return 0, 0, "", err
	}
	hot, out, err = c.run(t.dir)
	return cold, hot, out, err
}

func (t *localTree) remove() {
	os.RemoveAll(t.dir)
	if t.image != "" {
		os.Remove(t.image)
	}
}
