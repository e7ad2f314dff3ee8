package safetensors

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// Rules a sharded set can break (wrapped by *SetError).
var (
	ErrShardMissing   = errors.New("shard listed in the index is missing")
	ErrShardInvalid   = errors.New("shard is not a valid safetensors file")
	ErrKeyNotInShard  = errors.New("key listed in the index is not in its shard")
	ErrKeyInTwoShards = errors.New("key is in two shards")
	ErrKeyNotInIndex  = errors.New("key in a shard is not listed in the index")
	ErrAmbiguous      = errors.New("directory does not name one checkpoint")
)

// SetError names the file (a shard, or the index) and the key a sharded
// checkpoint is refused for.
type SetError struct {
	File   string
	Key    string
	Rule   error
	Detail string
}

func (e *SetError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File + ": ")
	}
	if e.Key != "" {
		fmt.Fprintf(&b, "key %q: ", e.Key)
	}
	if e.Detail != "" {
		b.WriteString(e.Detail)
	} else {
		b.WriteString(e.Rule.Error())
	}
	return b.String()
}

func (e *SetError) Unwrap() error { return e.Rule }

// Location is what a checkpoint path names: one safetensors file, or an
// index and the shards its weight map uses.
type Location struct {
	// Index is the index file's path; "" for a single file.
	Index string
	// Names are the shards as the index names them (for a single file, its
	// base name); Paths the files, in the same order.
	Names []string
	Paths []string
}

// Sharded reports whether the location is an index over shards.
func (l *Location) Sharded() bool { return l.Index != "" }

// Locate resolves a checkpoint path: a .safetensors file; an index
// ("*.safetensors.index.json"); or a directory holding exactly one index,
// or else exactly one .safetensors file. Anything else is refused with a
// message listing what was found. For an index it also returns the parsed
// index (nil otherwise).
func Locate(p string) (*Location, *Index, error) {
	p, err := Resolve(p)
	if err != nil {
		return nil, nil, err
	}
	if !strings.HasSuffix(p, ".json") {
		return &Location{Names: []string{filepath.Base(p)}, Paths: []string{p}}, nil, nil
	}
	idx, err := ReadIndex(p)
	if err != nil {
		return nil, nil, err
	}
	loc := &Location{Index: p, Names: idx.Shards()}
	dir := filepath.Dir(p)
	for _, n := range loc.Names {
		loc.Paths = append(loc.Paths, filepath.Join(dir, filepath.FromSlash(n)))
	}
	return loc, idx, nil
}

// Resolve is the first step of Locate, without reading any file: the
// .safetensors file or index p names (for a directory, the one it holds).
func Resolve(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if st.IsDir() {
		return pickInDir(p)
	}
	return p, nil
}

// ReadIndex reads and parses an index file, refusing a FIFO or device
// (which could block forever) and anything larger than MaxIndexSize.
func ReadIndex(p string) (*Index, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a FIFO must not block
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, &os.PathError{Op: "open", Path: p, Err: errors.New("not a regular file")}
	}
	if st.Size() > MaxIndexSize {
		return nil, &os.PathError{Op: "open", Path: p, Err: IndexTooLarge(st.Size())}
	}
	b := make([]byte, st.Size())
	if err := readFull(f, b, 0); err != nil {
		return nil, err
	}
	idx, err := ParseIndex(b)
	if err != nil {
		return nil, &os.PathError{Op: "parse", Path: p, Err: err}
	}
	return idx, nil
}

// pickInDir applies the directory rule of Locate.
func pickInDir(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var indexes, files []string
	for _, e := range entries {
		n := e.Name()
		// Dot files are ours (journals, temp files) or someone's hidden ones.
		if strings.HasPrefix(n, ".") || e.IsDir() {
			continue
		}
		switch {
		case strings.HasSuffix(n, IndexSuffix):
			indexes = append(indexes, n)
		case strings.HasSuffix(n, ".safetensors"):
			files = append(files, n)
		}
	}
	amb := func(detail string) error {
		return &SetError{File: dir, Rule: ErrAmbiguous, Detail: detail}
	}
	switch {
	case len(indexes) == 1:
		return filepath.Join(dir, indexes[0]), nil
	case len(indexes) > 1:
		return "", amb(fmt.Sprintf("it holds %d safetensors indexes (%s): give the one to mount", len(indexes), listNames(indexes)))
	case len(files) == 1:
		return filepath.Join(dir, files[0]), nil
	case len(files) > 1:
		return "", amb(fmt.Sprintf("it holds %d .safetensors files and no *%s (%s): give the file to mount, or add an index", len(files), IndexSuffix, listNames(files)))
	}
	return "", amb(fmt.Sprintf("it holds no .safetensors file and no *%s", IndexSuffix))
}

func listNames(names []string) string {
	if len(names) > 8 {
		return strings.Join(names[:8], ", ") + fmt.Sprintf(", and %d more", len(names)-8)
	}
	return strings.Join(names, ", ")
}

// Set is an opened, validated checkpoint: one file, or every shard of an
// index, with the cross-file rules checked (CheckSet).
type Set struct {
	Location
	Index *Index // nil for a single file
	Files []*File
}

// OpenSet opens and validates the checkpoint p names (see Locate). Shards
// are opened concurrently; nothing is left open when it fails.
func OpenSet(p string) (*Set, error) {
	loc, idx, err := Locate(p)
	if err != nil {
		return nil, err
	}
	return OpenLocated(loc, idx)
}

// OpenLocated opens and validates what Locate returned.
func OpenLocated(loc *Location, idx *Index) (*Set, error) {
	files, err := openAll(loc, idx)
	if err != nil {
		return nil, err
	}
	s := &Set{Location: *loc, Index: idx, Files: files}
	if idx != nil {
		headers := make([]*Header, len(files))
		for i, f := range files {
			headers[i] = &f.Header
		}
		if err := CheckSet(idx, loc.Names, headers); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func openAll(loc *Location, idx *Index) ([]*File, error) {
	files := make([]*File, len(loc.Paths))
	errs := make([]error, len(loc.Paths))
	sem := make(chan struct{}, max(4, 2*runtime.GOMAXPROCS(0)))
	var wg sync.WaitGroup
	for i, p := range loc.Paths {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			files[i], errs[i] = Open(p)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			continue
		}
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
		if idx == nil {
			return nil, err
		}
		return nil, ShardOpenError(idx, loc.Names[i], err, errors.Is(err, fs.ErrNotExist))
	}
	return files, nil
}

// ShardOpenError is the error for shard name of idx that could not be
// opened (missing: it is not there) or is not a valid safetensors file. A
// remote set reports its shards by the same rules.
func ShardOpenError(idx *Index, name string, err error, missing bool) error {
	if missing {
		return &SetError{File: name, Key: firstKeyOf(idx, name), Rule: ErrShardMissing,
			Detail: fmt.Sprintf("shard listed in the index is missing (%v)", err)}
	}
	return &SetError{File: name, Rule: ErrShardInvalid, Detail: err.Error()}
}

// firstKeyOf is the smallest key the index maps to shard, to name in a
// message.
func firstKeyOf(idx *Index, shard string) string {
	first := ""
	for k, s := range idx.WeightMap {
		if s == shard && (first == "" || k < first) {
			first = k
		}
	}
	return first
}

// CheckSet checks the rules that tie an index to its shards' headers
// (names[i] is headers[i]'s shard name): every key is in exactly one shard,
// the one the index names, and every key of every shard is in the index.
func CheckSet(idx *Index, names []string, headers []*Header) error {
	// The usual answer, without a map of its own: every key of every shard
	// listed for that shard, and as many keys as the index lists. A key in
	// two shards cannot pass (the index names one shard for it), nor can a
	// listed key missing from its shard (the count falls short).
	n := 0
	ok := true
	for i, h := range headers {
		for j := range h.Tensors {
			if idx.WeightMap[h.Tensors[j].Key] != names[i] {
				ok = false
			}
		}
		n += len(h.Tensors)
	}
	if ok && n == len(idx.WeightMap) {
		return nil
	}
	return checkSetSlow(idx, names, headers)
}

// checkSetSlow finds which rule a set breaks, for the message.
func checkSetSlow(idx *Index, names []string, headers []*Header) error {
	owner := make(map[string]string, len(idx.WeightMap))
	for i, h := range headers {
		name := names[i]
		for j := range h.Tensors {
			key := h.Tensors[j].Key
			if prev, ok := owner[key]; ok {
				return &SetError{File: name, Key: key, Rule: ErrKeyInTwoShards,
					Detail: fmt.Sprintf("key is in two shards, %s and %s", prev, name)}
			}
			owner[key] = name
			want, listed := idx.WeightMap[key]
			switch {
			case !listed:
				return &SetError{File: name, Key: key, Rule: ErrKeyNotInIndex}
			case want != name:
				return &SetError{File: name, Key: key, Rule: ErrKeyNotInShard,
					Detail: fmt.Sprintf("the index puts this key in %s, but it is in %s", want, name)}
			}
		}
	}
	if len(owner) != len(idx.WeightMap) {
		// Some listed key was not found: name the smallest, for a stable message.
		var missing []string
		for k := range idx.WeightMap {
			if _, ok := owner[k]; !ok {
				missing = append(missing, k)
			}
		}
		slices.Sort(missing)
		k := missing[0]
		return &SetError{File: idx.WeightMap[k], Key: k, Rule: ErrKeyNotInShard,
			Detail: fmt.Sprintf("key listed in the index is not in its shard %s (%d such keys)", idx.WeightMap[k], len(missing))}
	}
	return nil
}

// Close closes every file.
func (s *Set) Close() error {
	var err error
	for _, f := range s.Files {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
