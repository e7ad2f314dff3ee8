package main

import (
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// The flags of the mount's files directory (fs/files.go): the checkpoint
// as the files it is stored as, for programs that load files.

// defaultFilesDir is the files directory's name in the mount's root.
const defaultFilesDir = ".files"

type filesFlags struct {
	fl      *pflag.FlagSet
	dir     string
	off     bool
	include []string
}

func addFilesFlags(fl *pflag.FlagSet, ff *filesFlags) {
	ff.fl = fl
	fl.StringVar(&ff.dir, "files-dir", defaultFilesDir, "`NAME` of the root directory showing the checkpoint as files: the .safetensors file, or the index and every shard, each as the next write-back would leave it (plus, for a directory source, the config and tokenizer files beside it)")
	fl.BoolVar(&ff.off, "no-files", false, "no --files-dir directory")
	fl.StringSliceVar(&ff.include, "files-include", nil, "`GLOBS` (comma separated) of the files beside the checkpoint to show in --files-dir, read-only; given, they are shown for any source, not only a directory (default "+strings.Join(checkpoint.DefaultInclude, ",")+")")
}

// check refuses a files directory name the root cannot hold.
func (ff *filesFlags) check() error {
	if ff.off {
		return nil
	}
	if err := fs.FilesDirName(ff.dir); err != nil {
		return fail(exitUsage, "--files-dir: %v", err)
	}
	return nil
}

// apply sets the files directory's options for checkpoint ckpt (as given
// on the command line): the files beside it are shown for a directory
// source (a local directory, an hf:// repo, a URL ending in /), or when
// --files-include chose them.
func (ff *filesFlags) apply(o *fs.Options, ckpt string) {
	if ff.off {
		return
	}
	o.FilesDir = ff.dir
	if ff.fl.Changed("files-include") {
		o.FilesSiblings, o.FilesInclude = true, ff.include
		if o.FilesInclude == nil {
			o.FilesInclude = []string{}
		}
		return
	}
	if remote.IsURL(ckpt) {
		o.FilesSiblings = remote.IsDirURL(ckpt)
	} else if st, err := os.Stat(ckpt); err == nil && st.IsDir() {
		o.FilesSiblings = true
	}
}
