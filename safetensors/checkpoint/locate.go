package checkpoint

import (
	"os"
	"path/filepath"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// rootOf opens the directory of the checkpoint at loc, which the user
// named as given (a file, an index or a directory), and returns the name
// of its main file (the index, or the file) below it, and loc with its
// paths below that directory.
//
// The user's own path is trusted: if it names the file (or the index)
// through a symlink, the file the link points to is the checkpoint, and
// its directory the checkpoint's directory. What safejaxfs finds inside a
// directory is not (dirfs.go): a file located in a directory the user
// named, and every shard an index names, is taken by its own name there,
// and a read-write open refuses it if it is a symlink.
func rootOf(given string, loc *safetensors.Location) (*cdir, string, *safetensors.Location, error) {
	mainPath := loc.Index
	if mainPath == "" {
		mainPath = loc.Paths[0]
	}
	if st, err := os.Stat(given); err == nil && !st.IsDir() {
		if r, err := filepath.EvalSymlinks(mainPath); err == nil {
			mainPath = r
		}
	}
	abs, err := filepath.Abs(mainPath)
	if err != nil {
		return nil, "", nil, err
	}
	dir, main := filepath.Split(abs)
	d, err := openDir(dir)
	if err != nil {
		return nil, "", nil, err
	}
	out := &safetensors.Location{}
	if loc.Sharded() {
		out.Index = d.join(main)
		out.Names = loc.Names
		for _, n := range loc.Names {
			out.Paths = append(out.Paths, d.join(n))
		}
	} else {
		out.Names = []string{main}
		out.Paths = []string{d.join(main)}
	}
	return d, main, out, nil
}

func filepathToSlash(p string) string { return filepath.ToSlash(p) }
