package formats

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// ErrNotCheckpoint is matched (errors.Is) by every *NotCheckpointError.
var ErrNotCheckpoint = errors.New("not a checkpoint safejaxfs reads")

// NotCheckpointError says what a file is instead of a checkpoint, and what
// to do about it.
type NotCheckpointError struct {
	Path   string
	Format Format
	Detail string // what was seen: the LFS object, the page's title, ...
	Hint   string // what to do
}

func (e *NotCheckpointError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s is %s", e.Path, e.Format)
	if e.Detail != "" {
		fmt.Fprintf(&b, " (%s)", e.Detail)
	}
	b.WriteString(", not a checkpoint safejaxfs can read")
	if e.Hint != "" {
		b.WriteString(": " + e.Hint)
	}
	return b.String()
}

func (e *NotCheckpointError) Is(target error) bool { return target == ErrNotCheckpoint }

// Detect opens path and names its format; a zip is looked into (member
// names) to tell a PyTorch checkpoint from an .npz or a Keras archive.
func Detect(path string) (Format, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return Unknown, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Unknown, err
	}
	if !st.Mode().IsRegular() {
		return Unknown, &os.PathError{Op: "open", Path: path, Err: errors.New("not a regular file")}
	}
	head := make([]byte, SniffLen)
	n, err := f.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return Unknown, err
	}
	format := Sniff(head[:n], st.Size())
	if format == Zip {
		format = sniffZip(f, st.Size())
	}
	return format, nil
}

// sniffZip tells the kinds of zip apart by their members: torch.save
// writes <name>/data.pkl, np.savez only *.npy members, Keras 3 a
// config.json beside model.weights.h5.
func sniffZip(r io.ReaderAt, size int64) Format {
	zr, err := zip.NewReader(r, size)
	if err != nil || len(zr.File) == 0 {
		return Zip
	}
	npy := true
	for _, m := range zr.File {
		switch {
		case strings.HasSuffix(m.Name, "/data.pkl") && strings.Count(m.Name, "/") == 1, m.Name == "data.pkl":
			return TorchZip
		case m.Name == "model.weights.h5":
			return Keras
		}
		if !strings.HasSuffix(m.Name, ".npy") {
			npy = false
		}
	}
	if npy {
		return NPZ
	}
	return Zip
}

// Explain returns the error to show for a checkpoint that failed to open
// as safetensors: when the file (or the shard of a sharded checkpoint that
// failed) is recognisably something else, an error naming it and what to
// do; otherwise err unchanged. ckpt is the path the user gave.
func Explain(ckpt string, err error) error {
	if err == nil {
		return nil
	}
	var fe *safetensors.FormatError
	var se *safetensors.SetError
	path := ""
	switch {
	case errors.As(err, &se) && errors.Is(se.Rule, safetensors.ErrShardInvalid):
		dir := ckpt
		if st, serr := os.Stat(ckpt); serr == nil && !st.IsDir() {
			dir = filepath.Dir(ckpt)
		}
		path = filepath.Join(dir, filepath.FromSlash(se.File))
	case errors.As(err, &fe):
		var pe *os.PathError
		if errors.As(err, &pe) {
			path = pe.Path
		} else {
			path = ckpt
		}
	default:
		return err
	}
	format, derr := Detect(path)
	if derr != nil {
		return err
	}
	if nc := NotCheckpoint(path, format); nc != nil {
		return nc
	}
	if format.Mountable() {
		return fmt.Errorf("%s is %s, not safetensors: %w", path, format, err)
	}
	if head := readHead(path, 9); format == Unknown && (len(head) < 9 || head[8] != '{') && (errors.Is(err, safetensors.ErrHeaderTooLarge) || errors.Is(err, safetensors.ErrHeaderTruncated) ||
		errors.Is(err, safetensors.ErrTooSmall) || errors.Is(err, safetensors.ErrHeaderJSON) || errors.Is(err, safetensors.ErrHeaderUTF8)) {
		// Not even the start of a safetensors header: say so first, and
		// what the file starts with.
		return fmt.Errorf("%s is not a checkpoint of a format safejaxfs reads (safetensors, Flax msgpack, PyTorch, numpy, GGUF); it begins %s: %w", path, printable(string(readHead(path, 16))), err)
	}
	return err
}

// NotCheckpoint is the error for a file of a format nothing here reads,
// with what to do; nil for a format that can be read (safetensors, or
// Mountable) or that is unknown.
func NotCheckpoint(path string, format Format) error {
	e := &NotCheckpointError{Path: path, Format: format}
	switch format {
	case LFSPointer:
		e.Detail = lfsDetail(path)
		e.Hint = "the file was not downloaded (a clone without Git LFS): run git lfs pull in the repository (git lfs install first, if git lfs is new there)"
	case HTML:
		e.Detail = htmlTitle(path)
		e.Hint = "the download saved a web page (an error, a login or a consent page) instead of the file: download it again (from the Hugging Face Hub: a /resolve/ URL, with a token for gated models)"
	case JSON:
		e.Detail = firstLine(path)
		e.Hint = "if it was downloaded, the server answered with this document instead of the file; a sharded checkpoint's index must be named *.safetensors.index.json"
	case HDF5:
		e.Hint = "HDF5 (Keras .h5 weights) is not supported: load it with Keras or h5py and save the arrays with safetensors (safetensors.numpy.save_file)"
	case Keras:
		e.Hint = "extract model.weights.h5 (HDF5) and convert it with Keras or h5py to safetensors"
	case Gzip:
		e.Hint = "decompress it first: gunzip -k " + path + " (or zcat " + path + " > model.safetensors), then use the result"
	case Zstd:
		e.Hint = "decompress it first: zstd -d " + path + ", then use the result"
	case Bzip2:
		e.Hint = "decompress it first: bunzip2 -k " + path + ", then use the result"
	case XZ:
		e.Hint = "decompress it first: xz -dk " + path + ", then use the result"
	case Tar:
		e.Hint = "extract it first (tar -xf " + path + ") and use the checkpoint inside"
	case Zip:
		e.Hint = "it is neither a PyTorch checkpoint (no <name>/data.pkl) nor a numpy .npz (members other than *.npy); extract the checkpoint inside"
	case Pickle:
		e.Hint = "only PyTorch checkpoints are read from pickles (a pickle of anything else would need its code to run); load it in Python and save the tensors with safetensors"
	case GGML:
		e.Hint = "convert it to GGUF with llama.cpp's tools first"
	default:
		return nil
	}
	return e
}

// The patterns of the explanations are compiled on first use, not at every
// start of every command: with [^<]{1,200} unrolled, compiling them took
// 3 ms, a tenth of the time the daemon takes to start.
var (
	lfsOid  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?m)^oid (sha256:[0-9a-f]{64})$`) })
	lfsSize = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?m)^size ([0-9]+)$`) })
	titleRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?is)<title[^>]*>([^<]{1,200})`) })
)

func lfsDetail(path string) string {
	b := readHead(path, 512)
	var parts []string
	if m := lfsOid().FindSubmatch(b); m != nil {
		parts = append(parts, "object "+string(m[1][:19])+"...")
	}
	if m := lfsSize().FindSubmatch(b); m != nil {
		parts = append(parts, "of "+string(m[1])+" bytes")
	}
	return strings.Join(parts, " ")
}

func htmlTitle(path string) string {
	if m := titleRE().FindSubmatch(readHead(path, 16<<10)); m != nil {
		return "title " + printable(string(bytes.TrimSpace(m[1])))
	}
	return ""
}

func firstLine(path string) string {
	b := readHead(path, 200)
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return "it begins " + printable(string(bytes.TrimSpace(b)))
}

// printable quotes s for a message, shortened, so a hostile file cannot
// put control characters or a megabyte into it.
func printable(s string) string {
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return fmt.Sprintf("%q", s)
}

func readHead(path string, n int) []byte {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	b := make([]byte, n)
	k, _ := f.ReadAt(b, 0)
	return b[:k]
}
