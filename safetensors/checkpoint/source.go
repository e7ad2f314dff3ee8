package checkpoint

import (
	"context"
	"path/filepath"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// A checkpoint's bytes and files come from one of three sources, chosen
// by Open once and never changed:
//
//   - localSource: its own .safetensors files, mapped, edited through the
//     log and written back (checkpoint.go and the persistence files);
//   - *remoteSet: objects behind a URL, read through the remote package's
//     chunk cache (remote.go);
//   - *foreignSet: a file in another format, read through the formats
//     package (foreign.go).
//
// The last two are read-only and never change after Open: their reads
// take no lock, so a slow remote request holds nothing a refused write or
// Close would wait behind. Everything that differs between the three is a
// method here: the rest of the package asks the source what to do, and
// only the accessors that describe the kind (Remote, Format, Foreign)
// look at which one it is.
type source interface {
	// read serves Read and ReadContext. ctx only matters where a read
	// can wait on something it could end (a remote fetch).
	read(ctx context.Context, c *Checkpoint, id ID, off int64, n int) ([][]byte, func(), error)

	// The files view (fileview.go): the index's name and bytes (a
	// sharded checkpoint's only), each own file's version and bytes,
	// and the files next to the checkpoint.
	indexName(c *Checkpoint) string
	indexFacts(s *FileSet) (fileFacts, error)
	statFile(s *FileSet, e fileEntry) (FileInfo, error)
	openFile(s *FileSet, e fileEntry, want FileStamp) (*FileView, error)
	findSiblings(s *FileSet, own []string)

	// header is the header of the checkpoint's file i as it is stored
	// (Headers).
	header(c *Checkpoint, i int) *safetensors.Header

	// close releases what the source holds, once the checkpoint is done.
	close()
}

// Headers returns the checkpoint's files (the shards, in order; one for a
// plain checkpoint) and their headers as stored: on disk as last written
// back, on the server, or as a foreign file's format describes it (each
// tensor at the offset a canonical write would give it). ls and verify
// show these; edits not written back are not in them.
func (c *Checkpoint) Headers() (names []string, headers []*safetensors.Header) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for i, sh := range c.shards {
		names = append(names, sh.name)
		headers = append(headers, c.src.header(c, i))
	}
	return names, headers
}

// localSource is a checkpoint's own safetensors files: everything it
// serves lives in the Checkpoint (its shards, mappings and log).
type localSource struct{}

func (localSource) read(_ context.Context, c *Checkpoint, id ID, off int64, n int) ([][]byte, func(), error) {
	return c.readLocal(id, off, n)
}

func (localSource) indexName(c *Checkpoint) string                     { return filepath.Base(c.index.path) }
func (localSource) indexFacts(s *FileSet) (fileFacts, error)           { return s.localIndexFacts() }
func (localSource) statFile(s *FileSet, e fileEntry) (FileInfo, error) { return s.statShard(e) }
func (localSource) openFile(s *FileSet, e fileEntry, want FileStamp) (*FileView, error) {
	return s.openShard(e, want)
}
func (localSource) findSiblings(s *FileSet, own []string) { s.findLocalSiblings(own) }
func (localSource) header(c *Checkpoint, i int) *safetensors.Header {
	return &c.shards[i].cur.file.Header
}
func (localSource) close() {}
