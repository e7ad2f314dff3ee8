package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// A file renamed into place as a tensor (an editor's temp file saved as
// a .npy): the tensor it becomes and the deletion of the temp file's are
// one commit. After it, a crash leaves the new tensor and no temp; when
// any system call of that commit fails, neither happened, in memory and
// after the write-back.
func TestSyncDeleting(t *testing.T) {
	t.Parallel()
	tmpData := ctPattern(31, 96)
	newData := ctPattern(32, 16)
	ops := []struct {
		name string
		key  string // the tensor that takes the new bytes
		do   func(c *Checkpoint, tmp ID) error
	}{
		{"new tensor", "added", func(c *Checkpoint, tmp ID) error {
			_, err := c.PutNewSyncDeleting("added", safetensors.F32, []uint64{4}, newData, tmp)
			return err
		}},
		{"replace", "params.b", func(c *Checkpoint, tmp ID) error {
			id, ok := c.byKeyID("params.b")
			if !ok {
				return errors.New("no params.b")
			}
			return c.ReplaceSyncDeleting(id, safetensors.F32, []uint64{4}, newData, tmp)
		}},
	}
	for _, op := range ops {
		// before: the model with the temp tensor; after: with the op done.
		setup := func(t *testing.T) (string, *Checkpoint, ID, *ckModel, *ckModel) {
			m := ckDefault()
			path := ckFile(t, m)
			c := ckOpen(t, path, Options{})
			tmp, err := c.PutNewSync(".added.npy.tmp", safetensors.U8, []uint64{96}, tmpData)
			if err != nil {
				t.Fatal(err)
			}
			before := m.clone()
			before.tensors[".added.npy.tmp"] = ckTensor{safetensors.U8, []uint64{96}, tmpData}
			after := m.clone()
			after.tensors[op.key] = ckTensor{safetensors.F32, []uint64{4}, newData}
			return path, c, tmp, before, after
		}
		t.Run(op.name+"/crash after", func(t *testing.T) {
			path, c, tmp, _, after := setup(t)
			if err := op.do(c, tmp); err != nil {
				t.Fatal(err)
			}
			ckAbandon(c)
			c = ckOpen(t, path, Options{})
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			ckCheckFile(t, path, after, "after a crash")
		})
		_, c, tmp, _, _ := setup(t)
		calls := fxCalls(t, c, func() error { return op.do(c, tmp) })
		c.Close()
		for k := 1; k <= len(calls); k++ {
			t.Run(fmt.Sprintf("%s/%s fails", op.name, calls[k-1]), func(t *testing.T) {
				path, c, tmp, before, _ := setup(t)
				c.hooks = fxFailAt(k, unix.EIO)
				if err := op.do(c, tmp); err == nil {
					t.Fatal("the commit failed, the call did not")
				}
				c.hooks = nil
				segs, release, err := c.Read(tmp, 0, 96)
				if err != nil || !bytes.Equal(bytes.Join(segs, nil), tmpData) {
					t.Fatalf("the temp tensor after the failure: %v", err)
				}
				release()
				if _, ok := c.byKeyID("added"); ok {
					t.Fatal("the new tensor exists after the failure")
				}
				if err := c.Close(); err != nil {
					t.Fatal(err)
				}
				ckCheckFile(t, path, before, "after the failure and a write-back")
			})
		}
	}
}

// byKeyID is the ID of key (tests).
func (c *Checkpoint) byKeyID(key string) (ID, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	id, ok := c.byKey[key]
	return id, ok
}
