package checkpoint

import "fmt"

// CopyInto makes tensor dst, a plain file created in the mount and still
// empty, hold a copy of tensor src's bytes without copying them: the two
// share the content until either is written (writes copy a chunk first).
// It is how cp of a tensor inside the mount costs no more than its
// metadata. dst stays a 1-D U8 tensor of that many bytes; its new dtype
// is the caller's to give.
func (c *Checkpoint) CopyInto(dst, src ID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, err := c.writable(dst)
	if err != nil {
		return err
	}
	s := c.get(src)
	if s == nil {
		return fmt.Errorf("tensor %d: %w", src, ErrNotFound)
	}
	if !d.growable || d.cur.size != 0 {
		return fmt.Errorf("tensor %q: only an empty new file can become a copy: %w", d.key, ErrInvalid)
	}
	d.cur = s.cur.clone()
	d.shape = []uint64{uint64(d.cur.size)}
	d.touch()
	c.mark(d)
	c.layoutChanged(d.shard, true)
	return nil
}
