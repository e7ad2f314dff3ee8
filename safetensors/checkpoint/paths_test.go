package checkpoint

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Path-based forms of the directory-relative persistence functions, for
// tests that name files by path.

func dirOfPath(t testing.TB, path string) (*cdir, string) {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	d, err := openDir(filepath.Dir(abs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	return d, filepath.Base(abs)
}

// walPathOf is where the log of the checkpoint at path goes.
func walPathOf(path string) string {
	abs, _ := filepath.Abs(path)
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	return filepath.Join(filepath.Dir(abs), "."+filepath.Base(abs)+walSuffix)
}

// statIdentity is the identity of the file at path (symlinks followed).
func statIdentity(path string) (identity, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return identity{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return identityOf(&st), nil
}

// lockPath is lockFile of the file f is open on, named by f.Name().
func lockPath(f *os.File) (func() error, error) {
	abs, err := filepath.Abs(f.Name())
	if err != nil {
		return nil, err
	}
	d, err := openDir(filepath.Dir(abs))
	if err != nil {
		return nil, err
	}
	defer d.close()
	return lockFile(d, filepath.Base(abs), f)
}

func rewriteAtomicPath(path string, src []safetensors.Source, meta map[string]string, h *crashHooks) error {
	d, name, err := openPathDir(path)
	if err != nil {
		return err
	}
	defer d.close()
	return rewriteAtomic(d, name, src, meta, h)
}

func cleanTempsPath(path string) error {
	d, name, err := openPathDir(path)
	if err != nil {
		return err
	}
	defer d.close()
	return removeTemps(d, []string{name})
}

func writeRecoveryPath(path, dst string, src []safetensors.Source, meta map[string]string) (string, error) {
	d, name, err := openPathDir(path)
	if err != nil {
		return "", err
	}
	defer d.close()
	var owner *unix.Stat_t
	if st, err := d.lstat(name); err == nil {
		owner = &st
	}
	if dst != "" {
		dst = filepath.Base(dst)
	}
	return writeRecoveryFile(d, name, dst, src, meta, owner, nil)
}

func renameNoReplacePath(src, dst string) error {
	d, err := openDir(filepath.Dir(src))
	if err != nil {
		return err
	}
	defer d.close()
	return d.renameNoReplace(filepath.Base(src), filepath.Base(dst))
}

func openPathDir(path string) (*cdir, string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	d, err := openDir(filepath.Dir(abs))
	if err != nil {
		return nil, "", err
	}
	return d, filepath.Base(abs), nil
}

func exists(name string) bool {
	_, err := os.Lstat(name)
	return err == nil
}
