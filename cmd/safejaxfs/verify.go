package main

import (
	"fmt"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

func runVerify(args []string) error {
	fl := newFlags("verify", "CHECKPOINT",
		"Check CHECKPOINT strictly against the safetensors format (every rule the reference\nreader enforces, plus duplicate keys); for a sharded checkpoint (an index, or a\ndirectory holding one) every shard, and that every key is in exactly the shard\nthe index names. A URL is checked from its headers alone (no tensor bytes\nare fetched). Exit 0 if valid, 1 with the reason if not.")
	var rf remoteFlags
	addRemoteFlags(fl, &rf, false)
	var pf progressFlags
	addProgressFlags(fl, &pf, true)
	rest, err := parseFlags(fl, args, 1, 1)
	if err != nil {
		return err
	}
	ckpt := rest[0]
	if !remote.IsURL(ckpt) {
		// Mounted read-write: its log is the live mount's, not a crash's.
		if ckpt, err = readablePath("verify", ckpt); err != nil {
			return err
		}
		if err := checkCheckpoint(ckpt); err != nil {
			return err
		}
		if p, ok := checkpoint.Pending(ckpt); ok {
			return fail(exitInvalid, "%s: a write-back was interrupted (%s): tensors may be torn until it is finished; run safejaxfs recover %s (or mount it read-write)", ckpt, p, shellQuote(ckpt))
		}
	}
	src, err := openSource("verify", ckpt, &rf, pf, exitInvalid)
	if err != nil {
		return err
	}
	defer src.Close()
	shown, sharded := src.shown, src.c.Sharded()
	if foreign := src.c.ForeignFile(); foreign != nil {
		return verifyForeign(shown, foreign)
	}
	_, headers := src.c.Headers()
	var tensors, meta int
	var data uint64
	for _, h := range headers {
		tensors += len(h.Tensors)
		data += h.DataSize()
		meta = max(meta, len(h.Metadata))
	}
	if sharded {
		fmt.Printf("%s: ok, %s, %s, %d bytes of tensor data\n", shown, plural(len(headers), "shard"), plural(tensors, "tensor"), data)
		return nil
	}
	fmt.Printf("%s: ok, %s, %d bytes of tensor data, %s\n", shown, plural(tensors, "tensor"), data, nouns(meta, "metadata entry", "metadata entries"))
	return nil
}
