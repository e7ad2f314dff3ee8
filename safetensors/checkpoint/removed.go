package checkpoint

// A tensor deleted (or renamed over) while a file has it open keeps its
// bytes for that file, as an unlinked file does on any POSIX file system:
// reads go on, writes go nowhere, fstat shows it with no links. The FUSE
// layer knows when the kernel lets go of the last file and calls Drop.

// keepRemoved keeps a deleted tensor for the files that may have it open.
// Its bytes may point into a mapping that a rewrite retires: the
// reference taken here keeps that mapped until Drop. Caller holds mu.
func (c *Checkpoint) keepRemoved(id ID, t *tensor) {
	if c.removed == nil {
		c.removed = map[ID]*tensor{}
	}
	t.cur = t.cur.clone()
	t.cur.ref.acquire()
	if c.pins == nil {
		c.pins = map[ID][]*walMap{}
	}
	c.pins[id] = c.pinLogs()
	t.changed()
	c.removed[id] = t
}

// Drop forgets a deleted tensor once no file has it open.
func (c *Checkpoint) Drop(id ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(id)
}

func (c *Checkpoint) drop(id ID) {
	if t := c.removed[id]; t != nil {
		delete(c.removed, id)
		t.cur.ref.release()
		for _, m := range c.pins[id] {
			m.release()
		}
		delete(c.pins, id)
	}
}

// Attr is Info for stat: it also describes a tensor deleted while a file
// still has it open (Removed set).
func (c *Checkpoint) Attr(id ID) (Info, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if t := c.get(id); t != nil {
		return c.info(t), true
	}
	if t := c.removed[id]; t != nil {
		info := c.info(t)
		info.Removed = true
		return info, true
	}
	return Info{}, false
}
