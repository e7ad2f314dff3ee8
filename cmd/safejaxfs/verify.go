package main

import (
	"fmt"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

func runVerify(args []string) error {
	fl := newFlags("verify", "CHECKPOINT",
		"Check CHECKPOINT strictly against the safetensors format (every rule the reference\nreader enforces, plus duplicate keys). Exit 0 if valid, 1 with the reason if not.")
	rest, err := parseFlags(fl, args, 1, 1)
	if err != nil {
		return err
	}
	if err := checkCheckpoint(rest[0]); err != nil {
		return err
	}
	if j, ok := checkpoint.PendingJournal(rest[0]); ok {
		return fail(exitInvalid, "%s: a write-back was interrupted (journal %s): tensors may be torn until a read-write mount replays it", rest[0], j)
	}
	f, err := safetensors.Open(rest[0])
	if err != nil {
		return fail(exitInvalid, "%v", err)
	}
	defer f.Close()
	fmt.Printf("%s: ok, %d tensors, %d bytes of tensor data, %d metadata entries\n",
		rest[0], len(f.Tensors), f.DataSize(), len(f.Metadata))
	return nil
}
