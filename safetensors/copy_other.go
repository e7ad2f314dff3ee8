//go:build !linux

package safetensors

import (
	"errors"
	"os"
)

var errCFRUnsupported = errors.New("copy_file_range unsupported")

func copyFileRange(dst, src *os.File, off, size int64) (int64, error) {
	return 0, errCFRUnsupported
}
