package main

import (
	"fmt"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

func runVerify(args []string) error {
	fl := newFlags("verify", "CHECKPOINT",
		"Check CHECKPOINT strictly against the safetensors format (every rule the reference\nreader enforces, plus duplicate keys); for a sharded checkpoint (an index, or a\ndirectory holding one) every shard, and that every key is in exactly the shard\nthe index names. Exit 0 if valid, 1 with the reason if not.")
	rest, err := parseFlags(fl, args, 1, 1)
	if err != nil {
		return err
	}
	if _, err := checkCheckpoint(rest[0]); err != nil {
		return err
	}
	if p, ok := checkpoint.Pending(rest[0]); ok {
		return fail(exitInvalid, "%s: a write-back was interrupted (%s): tensors may be torn until a read-write mount finishes it", rest[0], p)
	}
	set, err := safetensors.OpenSet(rest[0])
	if err != nil {
		return fail(exitInvalid, "%v", err)
	}
	defer set.Close()
	var tensors, meta int
	var data uint64
	for _, f := range set.Files {
		tensors += len(f.Tensors)
		data += f.DataSize()
		meta = max(meta, len(f.Metadata))
	}
	if set.Sharded() {
		fmt.Printf("%s: ok, %d shards, %d tensors, %d bytes of tensor data\n", rest[0], len(set.Files), tensors, data)
		return nil
	}
	fmt.Printf("%s: ok, %d tensors, %d bytes of tensor data, %d metadata entries\n", rest[0], tensors, data, meta)
	return nil
}
