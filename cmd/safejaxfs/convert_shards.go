package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// splitShards assigns tensors (in source order) to shards as
// huggingface_hub's split_state_dict_into_shards_factory does: a tensor
// larger than maxShard gets a shard of its own; otherwise a shard is
// closed when the next tensor would take it past maxShard. Tensors sharing
// a storage (tied) count once and go where the first of them went.
// It returns the shards (indices into sources) and the total size.
func splitShards(sources []safetensors.Source, tied [][]string, maxShard int64) ([][]int, int64) {
	firstOf := map[string]string{} // key -> the first key of its storage
	for _, g := range tied {
		for _, k := range g {
			firstOf[k] = g[0]
		}
	}
	var shards [][]int
	var cur []int
	var curSize, total int64
	shardOf := map[string]int{} // first key of a storage -> its shard, -1 for the open one
	var later []int             // tensors placed with their storage's first
	for i, s := range sources {
		if f, ok := firstOf[s.Key]; ok && f != s.Key {
			if _, seen := shardOf[f]; seen {
				later = append(later, i)
				continue
			}
		}
		b, _ := safetensors.ByteSize(s.DType, s.Shape)
		size := int64(b)
		if size > maxShard {
			total += size
			shards = append(shards, []int{i})
			shardOf[s.Key] = len(shards) - 1
			continue
		}
		if curSize+size > maxShard {
			shards = append(shards, cur)
			for _, j := range cur {
				if shardOf[sources[j].Key] == -1 {
					shardOf[sources[j].Key] = len(shards) - 1
				}
			}
			cur, curSize = nil, 0
		}
		cur = append(cur, i)
		shardOf[s.Key] = -1
		curSize += size
		total += size
	}
	if len(cur) > 0 {
		shards = append(shards, cur)
		for _, j := range cur {
			if shardOf[sources[j].Key] == -1 {
				shardOf[sources[j].Key] = len(shards) - 1
			}
		}
	}
	for _, i := range later {
		k := shardOf[firstOf[sources[i].Key]]
		shards[k] = append(shards[k], i)
	}
	return shards, total
}

// writeSharded writes OUT's stem-0000k-of-0000N.safetensors shards and
// OUT.index.json, as save_pretrained names them; one shard is just OUT.
func writeSharded(out string, maxShard int64, src *convertSource, cf convertFlags) error {
	shards, total := splitShards(src.sources, src.tied, maxShard)
	if len(shards) <= 1 {
		layout, err := safetensors.Plan(src.sources, src.meta)
		if err != nil {
			return fail(exitInvalid, "%v", err)
		}
		return writeOutput(out, cf, int64(len(layout.Header))+int64(layout.DataSize()), func(f *os.File) error {
			_, err := layout.Write(f, src.sources)
			return err
		})
	}
	dir := filepath.Dir(out)
	stem := strings.TrimSuffix(filepath.Base(out), ".safetensors")
	indexPath := out + ".index.json"
	names := make([]string, len(shards))
	for k := range shards {
		names[k] = fmt.Sprintf("%s-%05d-of-%05d.safetensors", stem, k+1, len(shards))
		if err := checkOutput(filepath.Join(dir, names[k]), cf.force); err != nil {
			return err
		}
	}
	if err := checkOutput(indexPath, cf.force); err != nil {
		return err
	}
	idx := &safetensors.Index{Metadata: map[string]json.RawMessage{"total_size": json.RawMessage(strconv.FormatInt(total, 10))}, WeightMap: map[string]string{}}
	for k, shard := range shards {
		srcs := make([]safetensors.Source, len(shard))
		for j, i := range shard {
			srcs[j] = src.sources[i]
			idx.WeightMap[srcs[j].Key] = names[k]
		}
		layout, err := safetensors.Plan(srcs, src.meta)
		if err != nil {
			return fail(exitInvalid, "%v", err)
		}
		err = writeOutput(filepath.Join(dir, names[k]), cf, int64(len(layout.Header))+int64(layout.DataSize()), func(f *os.File) error {
			_, err := layout.Write(f, srcs)
			return err
		})
		if err != nil {
			return err
		}
	}
	b, err := idx.Marshal()
	if err != nil {
		return fail(exitInvalid, "%v", err)
	}
	return writeOutput(indexPath, cf, 0, func(f *os.File) error {
		_, err := f.Write(b)
		return err
	})
}
