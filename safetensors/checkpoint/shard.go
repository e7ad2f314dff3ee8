package checkpoint

import "os"

// shard is one safetensors file of the checkpoint: the only one of a plain
// checkpoint, or one the index names.
type shard struct {
	name   string // as the index names it; the base name of a plain checkpoint
	path   string // Dir(index)/name, or the checkpoint path as given
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
}

// openForWrite opens the shard for in-place writes, locks it, and remembers
// its identity. Called at open and after every rewrite (the new file is a
// new inode).
func (sh *shard) openForWrite() error {
	rw, err := os.OpenFile(sh.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	unlock, err := lockFile(rw)
	if err != nil {
		rw.Close()
		return err
	}
	ident, err := statIdentity(sh.path)
	if err != nil {
		unlock()
		rw.Close()
		return err
	}
	sh.closeFiles()
	sh.rw, sh.unlock, sh.ident = rw, unlock, ident
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

// unchangedOnDisk reports whether the file is still the one we last wrote:
// same inode, size and mtime.
func (sh *shard) unchangedOnDisk() bool {
	id, err := statIdentity(sh.path)
	return err == nil && id.same(sh.ident)
}
