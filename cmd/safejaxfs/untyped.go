package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
)

// maxNoteUntyped bounds the tensors the note after an unmount names, and
// the status line: a cp -r of thousands of files into a fresh mount would
// otherwise fill the terminal with their names. The daemon's log names
// them all, and `safejaxfs ls` shows each as U8.
const maxNoteUntyped = 20

// untypedKeys parses the mount root's user.safejaxfs.untyped (one key per
// line; past the attribute's size bound its last line says "... and N
// more"): the keys it names, in the order ls shows them, and how many it
// does not name.
func untypedKeys(list string) (keys []string, unnamed int) {
	if list == "" {
		return nil, 0
	}
	keys = strings.Split(strings.TrimSuffix(list, "\n"), "\n")
	if _, err := fmt.Sscanf(keys[len(keys)-1], "... and %d more", &unnamed); err == nil {
		keys = keys[:len(keys)-1]
	}
	slices.SortFunc(keys, naturalCompare)
	return keys, unnamed
}

// noteUntyped tells the user, after an unmount, which tensors created in
// the mount were saved as 1-D U8 because nothing gave them a dtype (the
// mount root's user.safejaxfs.untyped and user.safejaxfs.log, read before
// the unmount): a cp, tar or rsync that cannot carry attributes never
// changes a tensor's type silently. rescued: the edits went elsewhere than
// the checkpoint (the error after the note says where).
func noteUntyped(list, logFile string, rescued bool) {
	keys, more := untypedKeys(list)
	if len(keys) == 0 {
		return
	}
	if len(keys) > maxNoteUntyped {
		more += len(keys) - maxNoteUntyped
		keys = keys[:maxNoteUntyped]
	}
	where := "Mount again and set it"
	if rescued {
		where = "They are with your other edits (below): once those are in a checkpoint, mount it and set it"
	}
	fmt.Fprintf(os.Stderr, "safejaxfs: note: tensors created in the mount were saved as 1-D U8: nothing gave them a dtype (cp -a, rsync -X and tar --xattrs carry it; cp, rsync -a and tar x do not). %s with setfattr -n user.safetensors.dtype (and user.safetensors.shape):\n", where)
	for _, k := range keys {
		fmt.Fprintf(os.Stderr, "  %s\n", escapeControl(k))
	}
	if more > 0 {
		where := ""
		if logFile != "" {
			where = "; the daemon's log names them all: " + escapeControl(logFile)
		}
		fmt.Fprintf(os.Stderr, "  ... and %d more%s\n", more, where)
	}
}
