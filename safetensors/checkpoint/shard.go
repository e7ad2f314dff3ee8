package checkpoint

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// shard is one safetensors file of the checkpoint: the only one of a plain
// checkpoint, or one the index names.
type shard struct {
	name   string // below the checkpoint's directory: as the index names it, or the file's base name
	path   string // cdir.join(name): for messages and read-only opens
	cur    *mapping
	rw     *os.File     // open for in-place writes (read-write mounts)
	unlock func() error // drops the advisory lock
	ident  identity     // the file as we last left it
	// meta is the header's __metadata__ (nil: the header has none).
	meta map[string]string
	// layoutGen counts changes to this file's header (keys, dtypes, shapes,
	// metadata, tensors added or removed); persistedLayout is its value at
	// the last successful persist.
	layoutGen, persistedLayout uint64
	// metaGen counts changes of meta; loggedMetaGen is its value when the
	// log last recorded meta.
	metaGen, loggedMetaGen uint64
	// hdrBound bounds the header the writer would render for the shard now
	// (see headerBound); 0 until the first layout change computes it.
	hdrBound int64
}

// openForWrite opens the shard for in-place writes through the
// checkpoint's directory (never through a symlink: see dirfs.go), checks
// that it is the file that was validated and mapped (f), locks it, and
// remembers its identity. Called at open and after every rewrite (the new
// file is a new inode).
func (sh *shard) openForWrite(d *cdir, f *os.File) error {
	rw, err := d.open(sh.name, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening %s for writing: %w", sh.path, err)
	}
	fail := func(err error) error {
		rw.Close()
		return err
	}
	st, err := fstat(rw)
	if err != nil {
		return fail(err)
	}
	if f != nil {
		mst, err := fstat(f)
		if err != nil {
			return fail(err)
		}
		if keyOf(&mst) != keyOf(&st) {
			return fail(fmt.Errorf("%s: %w while it was being opened", sh.path, ErrChanged))
		}
	}
	if st.Nlink > 1 {
		// Bytes written in place would change the other names too (a
		// backup made with cp -al, a deduplicated copy).
		return fail(fmt.Errorf("%s has %d hard links; writing it in place would change the other names too (mount it --read-only, or copy it): %w", sh.path, st.Nlink, ErrLinked))
	}
	unlock, err := lockFile(d, sh.name, rw)
	if err != nil {
		return fail(err)
	}
	sh.closeFiles()
	sh.rw, sh.unlock, sh.ident = rw, unlock, identityOf(&st)
	return nil
}

func (sh *shard) closeFiles() {
	if sh.unlock != nil {
		sh.unlock()
		sh.unlock = nil
	}
	if sh.rw != nil {
		sh.rw.Close()
		sh.rw = nil
	}
}

// unchangedOnDisk reports whether the file at the shard's name is still
// the one we last wrote: same inode, size and mtime.
func (sh *shard) unchangedOnDisk(d *cdir) bool {
	id, err := identityAt(d, sh.name)
	return err == nil && id.same(sh.ident)
}

// refreshIdentity records the file as it is now, after we wrote it.
func (sh *shard) refreshIdentity() {
	if sh.rw == nil {
		return
	}
	var st unix.Stat_t
	if control(sh.rw, func(fd int) error { return unix.Fstat(fd, &st) }) == nil {
		sh.ident = identityOf(&st)
	}
}
