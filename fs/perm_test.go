package fs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// DefaultPerm, which safejaxfs mount starts from: the index's owner and
// the modes every file allows; a remote checkpoint's, the mounting user's
// less the process umask.
func TestDefaultPerm(t *testing.T) {
	dir := t.TempDir()
	loc := &safetensors.Location{Index: filepath.Join(dir, "m.safetensors.index.json")}
	for p, mode := range map[string]os.FileMode{loc.Index: 0o644, "a.safetensors": 0o640, "b.safetensors": 0o604} {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
			loc.Paths = append(loc.Paths, p)
		}
		if err := os.WriteFile(p, nil, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	p, err := DefaultPerm(loc)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Perm{Uid: uint32(os.Geteuid()), Gid: uint32(os.Getegid()), File: 0o600, Dir: 0o700}); p != want {
		t.Errorf("DefaultPerm(sharded) = %+v, want %+v", p, want)
	}

	loc.Paths = append(loc.Paths, filepath.Join(dir, "missing.safetensors"))
	if _, err := DefaultPerm(loc); err == nil || !strings.Contains(err.Error(), "missing.safetensors") {
		t.Errorf("DefaultPerm with a missing shard: %v, want an error naming it", err)
	}

	file, dirMode := ModesOfUmask(ProcessUmask())
	if p, err := DefaultPerm(nil); err != nil || p != (Perm{Uid: uint32(os.Geteuid()), Gid: uint32(os.Getegid()), File: file, Dir: dirMode}) {
		t.Errorf("DefaultPerm(remote) = %+v, %v", p, err)
	}
}
