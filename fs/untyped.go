package fs

import (
	"fmt"
	"strings"
)

// Files written without a dtype. A plain file created in the mount is a
// 1-D U8 tensor of its bytes until something gives it a dtype: setfattr,
// the user.safetensors.* attributes a backup tool restores (cp -a,
// rsync -X, tar --xattrs), the tensor it replaces at the same size (rsync's
// rename over it, tar's unlink and create, cp over it), or the tensor it
// is a copy of inside the mount (namespace/types.go). A tool that cannot carry
// attributes into a path where no tensor of that size was (cp -r, rsync -a
// or tar x into a fresh mount) leaves it U8. That is kept, not refused:
// the bytes are what the user copied, rsync -X sets the attributes only
// after it closed the file, and a dtype can be given afterwards. But it is
// never silent: the mount root's user.safejaxfs.untyped names every such
// tensor, the daemon logs them when it unmounts (and keeps that log), and
// `safejaxfs unmount` prints them.

// XattrUntyped, read on the mount root, lists (one key per line) the
// tensors created in this mount that nothing gave a dtype: they are saved
// as 1-D U8.
const XattrUntyped = "user.safejaxfs.untyped"

// untyped is the keys of the files created in this mount that are still
// plain bytes, sorted.
func (f *FS) untyped() []string { return f.ns.Untyped() }

// Untyped is the keys of the tensors created in this mount that nothing
// gave a dtype (saved as 1-D U8), sorted: for safejaxfs status.
func (f *FS) Untyped() []string { return f.untyped() }

// maxUntypedAttr keeps the attribute within what getxattr can return
// (XATTR_SIZE_MAX, 64 KiB).
const maxUntypedAttr = 60 << 10

// untypedAttr renders untyped for XattrUntyped (past maxUntypedAttr the
// last line says how many more); nil when there are none. A newline in a
// key is written as \n, so that each line stays one key.
func (f *FS) untypedAttr() []byte {
	keys := f.untyped()
	var b []byte
	for i, k := range keys {
		k = strings.ReplaceAll(k, "\n", `\n`)
		if len(b)+len(k)+1 > maxUntypedAttr-64 {
			return fmt.Appendf(b, "... and %d more\n", len(keys)-i)
		}
		b = append(append(b, k...), '\n')
	}
	return b
}
