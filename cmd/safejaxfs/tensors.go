package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
	"github.com/safejaxfs/safejaxfs/tree"
)

// What stats and diff share: a checkpoint opened read-only (local, sharded
// or remote), the tensors a PREFIX selects, their bytes streamed in
// chunks, and a progress line on a terminal.

// readChunk is the bytes read per request: a remote read of up to 1 MiB
// uses a pooled buffer, and a local one is a slice of the mapping either
// way, so memory stays bounded by a few chunks whatever the tensor size.
const readChunk = 1 << 20

// source is a checkpoint opened read-only.
type source struct {
	c     *checkpoint.Checkpoint
	shown string // how to name it: the path, or the URL without credentials
}

// openSource opens a checkpoint read-only. A local one with edits waiting
// in its log is refused, as a read-only mount refuses it.
func openSource(ckpt string, rf *remoteFlags, code int) (*source, error) {
	opt := checkpoint.Options{ReadOnly: true}
	if remote.IsURL(ckpt) {
		ropt, err := rf.options(nil)
		if err != nil {
			return nil, err
		}
		opt.Remote = ropt
	} else if err := checkCheckpoint(ckpt); err != nil {
		return nil, recode(err, code)
	}
	c, err := checkpoint.Open(ckpt, opt)
	if err != nil {
		return nil, fail(code, "%v%s", explainOpen(ckpt, err), remoteHint(err))
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

// progress is a line on stderr while a command reads a large checkpoint,
// only when stderr is a terminal.
type progress struct {
	verb       string
	total      int64
	done       int64
	tensor, of int
	start      time.Time
	last       time.Time
	w          io.Writer
}

// progressFrom is the size from which a progress line is worth showing:
// below it a command takes about a second.
const progressFrom = 256 << 20

func newProgress(verb string, total int64, tensors int) *progress {
	if total < progressFrom || !isTerminal(os.Stderr) {
		return nil
	}
	p := &progress{verb: verb, total: total, of: tensors, start: time.Now(), w: os.Stderr}
	p.show(p.start) // at once: a slow first read (a remote one) shows too
	return p
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// next starts tensor i (1-based); add counts bytes read. Both are no-ops on
// a nil progress.
func (p *progress) next(i int) {
	if p != nil {
		p.tensor = i
	}
}

func (p *progress) add(n int) {
	if p == nil {
		return
	}
	p.done += int64(n)
	if now := time.Now(); now.Sub(p.last) >= 200*time.Millisecond {
		p.show(now)
	}
}

func (p *progress) show(now time.Time) {
	p.last = now
	fmt.Fprintf(p.w, "\r\033[K%s: %s of %s (%d%%), tensor %d of %d", p.verb,
		humanBytes(p.done), humanBytes(p.total), p.done*100/p.total, max(p.tensor, 1), p.of)
	if d := now.Sub(p.start).Seconds(); d > 0 {
		fmt.Fprintf(p.w, ", %s/s", humanBytes(int64(float64(p.done)/d)))
	}
}

// finish erases the line.
func (p *progress) finish() {
	if p != nil {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), -1
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTP"[i])
}
