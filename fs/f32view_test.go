package fs

import (
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// TestF32Ino: float32 views have inode numbers of their own.
func TestF32Ino(t *testing.T) {
	seen := map[uint64]bool{}
	for id := range checkpoint.ID(1000) {
		for _, i := range []uint64{ino(kindDir, uint64(id)), tensorIno(id), npyIno(id), ino(kindF32, uint64(id))} {
			if seen[i] {
				t.Fatalf("ino %d given twice", i)
			}
			seen[i] = true
		}
	}
}
