package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Installing a rewritten file: rename(2) of the temp file over it, which
// is atomic. Some files cannot be renamed over: a file bind-mounted into a
// container (docker run -v model.safetensors:/m/model.safetensors) is a
// mount point of its own, and the kernel answers EBUSY, or EXDEV when the
// temp file is on another mount. Such a file is installed by copying the
// temp file's bytes into it in place, which is not atomic, so it happens
// only after the compaction's commit point and after a record in the log
// saying so (recInstall): a crash in the middle leaves the file torn, the
// temp file whole and the log saying whose the tear is, and the next open
// copies again (recover.go). The temp file is removed only after the log.
//
// Other rename failures (EIO, EPERM on an immutable file, ENOSPC in the
// directory) are returned as they are: the compaction is left committed
// and retried (compact.go), never abandoned.

// renameRefused reports whether err says the file cannot be replaced by a
// rename but may take its new bytes in place.
func renameRefused(err error) bool {
	return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EXDEV)
}

// copyInPlace makes dst (name below the directory) hold exactly the size
// bytes of src: copied (kernel-side where it can), cut to size and
// fdatasynced.
func copyInPlace(src, dst *os.File, size int64, name string, h *crashHooks) error {
	if err := h.sys(opWrite, name); err != nil {
		return err
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := dst.Seek(0, io.SeekStart); err != nil {
		return err
	}
	// *os.File's ReadFrom uses copy_file_range for an *os.File behind a
	// LimitedReader, and falls back to read and write where it cannot.
	n, err := dst.ReadFrom(&io.LimitedReader{R: src, N: size})
	if err != nil {
		return fmt.Errorf("copying the new %s into place: %w", dst.Name(), err)
	}
	if n != size {
		return fmt.Errorf("copying the new %s into place: %d of %d bytes: %w", dst.Name(), n, size, io.ErrUnexpectedEOF)
	}
	if err := h.sys(opTruncate, name); err != nil {
		return err
	}
	if err := dst.Truncate(size); err != nil {
		return err
	}
	if herr := h.hit("copied"); herr != nil {
		return herr
	}
	return syncData(dst, name, h)
}

// copyInPlaceNamed is copyInPlace of the temp file tmp into the file
// target, both below d (recovery: no mount has them open).
func copyInPlaceNamed(d *cdir, tmp, target string, h *crashHooks) error {
	src, err := d.open(tmp, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := fstat(src)
	if err != nil {
		return err
	}
	dst, err := d.open(target, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer dst.Close()
	return copyInPlace(src, dst, st.Size, target, h)
}
