package main

import (
	"fmt"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
	"github.com/safejaxfs/safejaxfs/tree"
)

// What stats and diff share: a checkpoint opened read-only (local, sharded
// or remote), the tensors a PREFIX selects, their bytes streamed in
// chunks, and a progress line (progress.go).

// readChunk is the bytes read per request: a remote read of up to 1 MiB
// uses a pooled buffer, and a local one is a slice of the mapping either
// way, so memory stays bounded by a few chunks whatever the tensor size.
const readChunk = 1 << 20

// source is a checkpoint opened read-only.
type source struct {
	c     *checkpoint.Checkpoint
	shown string // how to name it: the path, or the URL without credentials
}

// openSource opens a checkpoint read-only for command verb. A local one
// with edits waiting in its log is refused, as a read-only mount refuses
// it; one mounted read-write is read through its mount (mounted.go).
func openSource(verb, ckpt string, rf *remoteFlags, pf progressFlags, code int) (*source, error) {
	preferHugePages() // a large checkpoint's records are about to be made (hugepages.go)
	opt := checkpoint.Options{ReadOnly: true}
	done := func() {}
	if remote.IsURL(ckpt) {
		ropt, err := rf.options(nil)
		if err != nil {
			return nil, err
		}
		ropt.HeaderProgress, done = headerProgress(pf)
		opt.Remote = ropt
	} else {
		p, err := readablePath(verb, ckpt)
		if err != nil {
			if code == exitTrouble {
				return nil, recode(err, code) // diff's one code for trouble
			}
			return nil, err
		}
		ckpt = p
		if err := checkCheckpoint(ckpt); err != nil {
			return nil, recode(err, code)
		}
	}
	c, err := checkpoint.Open(ckpt, opt)
	done()
	if err != nil {
		if remote.IsURL(ckpt) {
			return nil, recode(remoteOpenError(ckpt, err, opt.Remote), code)
		}
		return nil, fail(code, "%v", explainOpen(ckpt, err))
	}
	s := &source{c: c, shown: ckpt}
	if r := c.Remote(); r != nil {
		s.shown = r.URL
	}
	return s, nil
}

func (s *source) Close() { s.c.Close() }

// recode gives an exitError another exit code (diff's "trouble" is 2).
func recode(err error, code int) error {
	if ee, ok := err.(*exitError); ok && ee.code != exitUsage {
		return &exitError{code: code, err: ee.err}
	}
	return err
}

// selected is one tensor a command works on.
type selected struct {
	id   checkpoint.ID
	path string // in the tree a mount shows
	info checkpoint.Info
}

// selectTensors lists the tensors under prefix (every one for ""), in the
// order ls lists them; found is false when prefix names nothing.
func (s *source) selectTensors(prefix, sep string) (sel []selected, found bool, err error) {
	keys := s.c.Keys()
	t, err := tree.Build(keys, tree.Options{Sep: sep, Reserved: fs.ReservedNames(s.c.Sharded())})
	if err != nil {
		return nil, false, fail(exitUsage, "%v", err)
	}
	top := t.Root
	if prefix != "" {
		if top = findPrefix(t, prefix); top == nil {
			return nil, false, nil
		}
	}
	walk(top, func(n *tree.Node) {
		if n.IsDir() {
			return
		}
		id := checkpoint.ID(n.Tensor)
		info, ok := s.c.Info(id)
		if ok {
			sel = append(sel, selected{id: id, path: n.Path(), info: info})
		}
	})
	return sel, true, nil
}

// read returns n bytes of tensor id at off (fewer at its end) as one
// slice: the checkpoint's own when it hands out one segment, else copied
// into buf. release must be called once the bytes are used.
func (s *source) read(id checkpoint.ID, key string, off int64, n int, buf []byte) ([]byte, func(), error) {
	segs, release, err := s.c.Read(id, off, n)
	if err != nil {
		return nil, nop, fmt.Errorf("%s: tensor %q: %w", s.shown, key, err)
	}
	if len(segs) == 1 {
		return segs[0], release, nil
	}
	buf = buf[:0]
	for _, seg := range segs {
		buf = append(buf, seg...)
	}
	release()
	return buf, nop, nil
}

func nop() {}
