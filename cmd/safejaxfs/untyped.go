package main

import (
	"fmt"
	"os"
	"strings"
)

// noteUntyped tells the user, after an unmount, which tensors created in
// the mount went to the checkpoint as 1-D U8 because nothing gave them a
// dtype (the mount root's user.safejaxfs.untyped, read before the
// unmount): a cp, tar or rsync that cannot carry attributes never changes
// a tensor's type silently.
func noteUntyped(list string) {
	if list == "" {
		return
	}
	keys := strings.Split(strings.TrimSuffix(list, "\n"), "\n")
	fmt.Fprintf(os.Stderr, "safejaxfs: note: tensors created in the mount were saved as 1-D U8: nothing gave them a dtype (cp -a, rsync -X and tar --xattrs carry it; cp, rsync -a and tar x do not). Mount again and set it with setfattr -n user.safetensors.dtype (and user.safetensors.shape):\n")
	for _, k := range keys {
		fmt.Fprintf(os.Stderr, "  %s\n", escapeControl(k))
	}
}
