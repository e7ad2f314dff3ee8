package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// The mount's files directory (/.files/): the checkpoint as the files it
// is stored as, through a real mount. The truth is the source's files
// before any edit, and the checkpoint's files on disk after the unmount
// that writes the edits back: /.files/ read before the unmount must be
// exactly those bytes.

// filesOf reads every regular file of the mount's files directory.
func filesOf(t testing.TB, mnt string) map[string][]byte {
	t.Helper()
	dir := filepath.Join(mnt, defaultFilesDir)
	out := map[string][]byte{}
	for _, rel := range walkFiles(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		out[rel] = b
	}
	return out
}

// dirFiles reads the named files of dir.
func dirFiles(t testing.TB, dir string, names []string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, n := range names {
		out[n] = mustRead(t, filepath.Join(dir, n))
	}
	return out
}

func sameFileSet(t testing.TB, what string, got, want map[string][]byte) {
	t.Helper()
	g, w := mapKeys(got), mapKeys(want)
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Fatalf("%s: files %v, want %v", what, g, w)
	}
	for n, w := range want {
		if g := got[n]; !bytes.Equal(g, w) {
			i := 0
			for i < len(g) && i < len(w) && g[i] == w[i] {
				i++
			}
			t.Fatalf("%s: %s differs (%d vs %d bytes, first difference at byte %d)", what, n, len(g), len(w), i)
		}
	}
}

func mapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// loaderFiles are files save_pretrained and a tokenizer leave beside the
// weights, and some a loader does not want.
var loaderFiles = map[string]string{
	"config.json":             `{"architectures": ["LlamaForCausalLM"], "hidden_size": 8}`,
	"generation_config.json":  `{"max_length": 20}`,
	"tokenizer.json":          `{"model": {"type": "BPE"}}`,
	"tokenizer_config.json":   `{"model_max_length": 512}`,
	"special_tokens_map.json": `{"eos_token": "</s>"}`,
	"tokenizer.model":         "\x0a\x05hello",
	"merges.txt":              "a b\n",
	"modeling_x.py":           "import torch\n",
	"README.md":               "not for a loader",
	"training_args.bin":       "not for a loader",
}

var loaderShown = []string{"config.json", "generation_config.json", "merges.txt", "modeling_x.py", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"}

func addLoaderFiles(t testing.TB, dir string) {
	t.Helper()
	for n, b := range loaderFiles {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Unedited: every byte of every file is the source's, single and sharded;
// a directory source shows the loader's files beside them (and nothing
// else), a file source only the checkpoint; the directory is read-only.
func TestFilesUnedited(t *testing.T) {
	t.Parallel()
	single := writeCheckpoint(t, "model.safetensors", flaxMeta, flaxTensors()...)
	dir, _ := defaultSet(t)
	addLoaderFiles(t, dir)
	addLoaderFiles(t, filepath.Dir(single))
	shards := []string{indexName, shardName(0, 3), shardName(1, 3), shardName(2, 3)}
	for _, c := range []struct {
		name, src, dir string
		want           []string
	}{
		{"single file", single, filepath.Dir(single), []string{"model.safetensors"}},
		{"single in a directory", filepath.Dir(single), filepath.Dir(single), append([]string{"model.safetensors"}, loaderShown...)},
		{"sharded by its index", filepath.Join(dir, indexName), dir, shards},
		{"sharded in a directory", dir, dir, append(slices.Clone(shards), loaderShown...)},
	} {
		t.Run(c.name, func(t *testing.T) {
			mnt := mount(t, c.src)
			sameFileSet(t, c.name, filesOf(t, mnt), dirFiles(t, c.dir, c.want))
			fd := filepath.Join(mnt, defaultFilesDir)
			st := statT(t, filepath.Join(fd, c.want[0]))
			if st.Mode&0o7777 != 0o444 {
				t.Errorf("mode %o, want 0444", st.Mode&0o7777)
			}
			if _, err := os.OpenFile(filepath.Join(fd, c.want[0]), os.O_WRONLY, 0); !errors.Is(err, syscall.EACCES) {
				t.Errorf("opened for writing: %v", err)
			}
			for _, op := range []func() error{
				func() error { return os.Remove(filepath.Join(fd, c.want[0])) },
				func() error { return os.WriteFile(filepath.Join(fd, "new.json"), nil, 0o644) },
				func() error { return os.Rename(filepath.Join(fd, c.want[0]), filepath.Join(fd, "x")) },
				func() error { return os.Truncate(filepath.Join(fd, c.want[0]), 0) },
			} {
				if err := op(); err == nil {
					t.Error("a change inside the files directory was accepted")
				}
			}
			unmountOK(t, mnt)
		})
	}
}

// fileEdit is an edit made through the tree, as a user would.
type fileEdit struct {
	name string
	do   func(t testing.TB, mnt string)
}

func fileEdits(big, small string) []fileEdit {
	p := func(mnt, key string) string { return filepath.Join(mnt, strings.ReplaceAll(key, ".", "/")) }
	return []fileEdit{
		{"bytes", func(t testing.TB, mnt string) {
			f, err := os.OpenFile(p(mnt, big), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 100), 20); err != nil {
				t.Fatal(err)
			}
		}},
		{"create", func(t testing.TB, mnt string) {
			if err := os.WriteFile(filepath.Join(mnt, "added.npy"), npyFile(t, f32("added", 9, 2, 3)), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"remove", func(t testing.TB, mnt string) {
			if err := os.Remove(p(mnt, small)); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename", func(t testing.TB, mnt string) {
			if err := os.Rename(p(mnt, small), filepath.Join(mnt, "aaa_renamed")); err != nil {
				t.Fatal(err)
			}
		}},
		{"reshape", func(t testing.TB, mnt string) {
			if err := unix.Setxattr(p(mnt, big), "user.safetensors.dtype", []byte("U8"), 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"metadata", func(t testing.TB, mnt string) {
			if err := os.WriteFile(filepath.Join(mnt, "__metadata__"), []byte(`{"format": "pt", "edited": "<yes>"}`), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
}

// After each kind of edit, single and sharded, /.files/ is exactly the
// files the unmount then writes.
func TestFilesFollowEdits(t *testing.T) {
	t.Parallel()
	for _, sharded := range []bool{false, true} {
		big, small := "params.Dense_0.kernel", "step_scale"
		if sharded {
			big, small = "model.embed_tokens.weight", "model.norm.weight"
		}
		for _, e := range fileEdits(big, small) {
			name := "single/" + e.name
			if sharded {
				name = "sharded/" + e.name
			}
			t.Run(name, func(t *testing.T) {
				var dir string
				var names []string
				if sharded {
					dir, _ = defaultSet(t)
					names = []string{indexName, shardName(0, 3), shardName(1, 3), shardName(2, 3)}
				} else {
					dir = filepath.Dir(writeCheckpoint(t, "model.safetensors", map[string]string{"format": "pt"}, flaxTensors()...))
					names = []string{"model.safetensors"}
				}
				mnt := mount(t, dir)
				before := filesOf(t, mnt)
				e.do(t, mnt)
				after := filesOf(t, mnt)
				if reflectEqual(before, after) {
					t.Fatalf("%s changed nothing in /.files/", e.name)
				}
				unmountOK(t, mnt)
				sameFileSet(t, "/.files/ against the written-back checkpoint", after, dirFiles(t, dir, names))
				for _, n := range names[min(1, len(names)-1):] {
					f, err := safetensors.Open(filepath.Join(dir, n))
					if err != nil {
						t.Fatalf("%s does not validate: %v", n, err)
					}
					f.Close()
				}
			})
		}
	}
}

func reflectEqual(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// A reader holding a file open across an edit and its write-back (sync)
// reads one version from open to close, by read and by mmap: unedited
// (served straight from the checkpoint file when the kernel allows) and
// edited (served by the daemon); a new open sees the new version.
func TestFilesReaderKeepsVersion(t *testing.T) {
	t.Parallel()
	ckpt := writeCheckpoint(t, "model.safetensors", flaxMeta, append(flaxTensors(), raw("big", safetensors.U8, ctBytes(7, 3<<20), 3<<20))...)
	orig := mustRead(t, ckpt)
	mnt := mount(t, ckpt)
	view := filepath.Join(mnt, defaultFilesDir, "model.safetensors")
	tensor := filepath.Join(mnt, "big")
	write := func(off int64, b []byte) {
		t.Helper()
		f, err := os.OpenFile(tensor, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	sync := func() {
		t.Helper()
		if r := cli(t, "sync", mnt); r.code != 0 {
			t.Fatalf("sync: exit %d: %s", r.code, r.stderr)
		}
	}
	// holder opens the view, reads its first half and maps it whole.
	type holder struct {
		f *os.File
		m []byte
	}
	open := func() holder {
		t.Helper()
		f, err := os.Open(view)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		half := make([]byte, st.Size()/2)
		if _, err := f.ReadAt(half, 0); err != nil {
			t.Fatal(err)
		}
		m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		return holder{f, m}
	}
	check := func(h holder, want []byte, what string) {
		t.Helper()
		got := make([]byte, len(want)+1)
		n, _ := h.f.ReadAt(got, 0)
		if !bytes.Equal(got[:n], want) {
			t.Fatalf("%s: read %d bytes that are not the version it opened", what, n)
		}
		if !bytes.Equal(h.m, want) {
			t.Fatalf("%s: the mapping is not the version it opened", what)
		}
	}
	clean := open()
	defer clean.f.Close()
	write(1000, []byte("first edit"))
	edited := open()
	defer edited.f.Close()
	v1 := bytes.Clone(edited.m)
	if bytes.Equal(v1, orig) {
		t.Fatal("the edit does not show in a new open")
	}
	write(2<<20, []byte("second edit")) // bytes the edited view reads from the file
	sync()                              // written back: in place, unless a reader would see it
	write(5, []byte("third"))
	check(clean, orig, "opened before the edits")
	check(edited, v1, "opened between the edits")
	now := mustRead(t, view)
	unix.Munmap(clean.m)
	unix.Munmap(edited.m)
	clean.f.Close()
	edited.f.Close()
	unmountOK(t, mnt)
	if !bytes.Equal(now, mustRead(t, ckpt)) {
		t.Fatal("a new open after the edits is not what the unmount wrote")
	}
}

// numpy's np.memmap of a /.files/ shard and this project's strict reader
// agree on every tensor, unedited and edited.
func TestFilesNumpyMemmap(t *testing.T) {
	t.Parallel()
	py := numpy(t)
	dir, _ := defaultSet(t)
	mnt := mount(t, dir)
	shard := filepath.Join(mnt, defaultFilesDir, shardName(1, 3))
	const script = `
import hashlib, json, struct, sys
import numpy as np
m = np.memmap(sys.argv[1], dtype=np.uint8, mode="r")
n = struct.unpack("<Q", bytes(m[:8]))[0]
h = json.loads(bytes(m[8:8+n]))
h.pop("__metadata__", None)
out = {}
for k, v in h.items():
    a, b = v["data_offsets"]
    out[k] = [v["dtype"], v["shape"], hashlib.sha256(bytes(m[8+n+a:8+n+b])).hexdigest()]
print(json.dumps(out))
`
	agree := func(what string) {
		t.Helper()
		var fromNumpy map[string][]any
		if err := json.Unmarshal([]byte(runPython(t, script, shard)), &fromNumpy); err != nil {
			t.Fatal(err)
		}
		f, err := safetensors.Open(shard)
		if err != nil {
			t.Fatalf("%s: the strict reader refuses %s: %v", what, shard, err)
		}
		defer f.Close()
		if len(f.Tensors) != len(fromNumpy) || len(f.Tensors) == 0 {
			t.Fatalf("%s: the strict reader sees %d tensors, numpy %d", what, len(f.Tensors), len(fromNumpy))
		}
		for i, ts := range f.Tensors {
			sum := sha256.Sum256(f.Bytes(i))
			shape, _ := json.Marshal(ts.Shape)
			np := fromNumpy[ts.Key]
			npShape, _ := json.Marshal(np[1])
			if np == nil || np[0] != ts.DType.String() || string(npShape) != string(shape) || np[2] != hex.EncodeToString(sum[:]) {
				t.Fatalf("%s: %s: numpy %v, strict reader %s %s %x", what, ts.Key, np, ts.DType, shape, sum)
			}
		}
	}
	_ = py
	agree("unedited")
	if err := os.WriteFile(filepath.Join(mnt, "model/layers/0/input_layernorm/weight"), ctBytes(99, 16), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "model/layers/1"), filepath.Join(mnt, "model/layers/7")); err != nil {
		t.Fatal(err)
	}
	agree("edited")
}

// The flags: --no-files shows none, --files-dir names it, a bad name is
// refused before mounting.
func TestFilesFlags(t *testing.T) {
	t.Parallel()
	ckpt := writeCheckpoint(t, "model.safetensors", flaxMeta, flaxTensors()...)
	mnt := mount(t, ckpt, "--no-files")
	if _, err := os.Stat(filepath.Join(mnt, defaultFilesDir)); !os.IsNotExist(err) {
		t.Errorf("--no-files: %v", err)
	}
	unmountOK(t, mnt)
	mnt = mount(t, ckpt, "--files-dir", "ckpt.files", "--files-include", "*.json")
	os.WriteFile(filepath.Join(filepath.Dir(ckpt), "config.json"), []byte("{}"), 0o644)
	if _, err := os.Stat(filepath.Join(mnt, defaultFilesDir)); !os.IsNotExist(err) {
		t.Errorf("--files-dir: the default name is there too: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "ckpt.files", "model.safetensors")); err != nil || !bytes.Equal(b, mustRead(t, ckpt)) {
		t.Errorf("--files-dir: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "ckpt.files", "config.json")); err != nil || string(b) != "{}" {
		t.Errorf("--files-include with a file source: %q %v", b, err)
	}
	unmountOK(t, mnt)
	for _, bad := range []string{"a/b", "", "__metadata__", ".."} {
		r := cli(t, "mount", "--files-dir", bad, ckpt, newMountpoint(t))
		if r.code != exitUsage || !strings.Contains(r.stderr, "--files-dir") {
			t.Errorf("--files-dir %q: exit %d %q", bad, r.code, r.stderr)
		}
	}
}

// A Hub-like server: the repo's config and tokenizer files and the shards
// through /.files/, listed by the Hub's tree API (and found by name when
// the server has no such API); a tensor read through the tree and then
// its shard through /.files/ is fetched once.
func TestFilesRemoteHub(t *testing.T) {
	dir, parts := remoteSet(t)
	addLoaderFiles(t, dir)
	const commit = "0123456789abcdef0123456789abcdef01234567"
	testsrv.NoHFEnv(t)
	for _, withAPI := range []bool{true, false} {
		t.Run(fmt.Sprintf("tree API %v", withAPI), func(t *testing.T) {
			var es []testsrv.HubEntry
			var tree []map[string]any
			add := func(name string, big bool) {
				for _, rev := range []string{"main", commit} {
					es = append(es, testsrv.HubEntry{Repo: "org/model", Rev: rev, Path: name, Commit: commit, File: filepath.Join(dir, name), Big: big})
				}
				st, _ := os.Stat(filepath.Join(dir, name))
				tree = append(tree, map[string]any{"type": "file", "path": name, "size": st.Size(), "oid": "x"})
			}
			add(indexName, false)
			for i := range parts {
				add(shardName(i, len(parts)), true)
			}
			for n := range loaderFiles {
				add(n, n == "tokenizer.json")
			}
			tree = append(tree, map[string]any{"type": "directory", "path": "sub", "size": 0})
			if withAPI {
				b, _ := json.Marshal(tree)
				tf := filepath.Join(t.TempDir(), "tree.json")
				os.WriteFile(tf, b, 0o644)
				es = append(es, testsrv.HubEntry{Repo: "org/model", Rev: commit, Commit: commit, File: tf, Tree: true})
			}
			ng, _, _ := testsrv.StartHub(t, "", es...)
			mnt, _ := remoteMount(t, "hf://org/model")
			// The tensor through the tree first.
			lm := filepath.Join(mnt, "lm_head/weight")
			if b := mustRead(t, lm); !bytes.Equal(b, parts[2][1].data) {
				t.Fatal("the tensor read through the tree differs")
			}
			k := len(ng.Log(t))
			want := []string{indexName, shardName(0, 3), shardName(1, 3), shardName(2, 3)}
			if withAPI {
				want = append(want, loaderShown...)
			} else {
				// Found by name: the literal names and the usual
				// files for the patterns.
				want = append(want, "config.json", "generation_config.json", "merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json")
			}
			sameFileSet(t, "hf://org/model", filesOf(t, mnt), dirFiles(t, dir, want))
			// The last shard, whose every chunk the tree's read of its
			// 5 MiB tensor fetched, was not fetched again.
			sum := sha256.Sum256(mustRead(t, filepath.Join(dir, shardName(2, 3))))
			for _, l := range ng.Since(t, k) {
				if l.URI == "/blobs/"+hex.EncodeToString(sum[:]) {
					t.Errorf("%s %s: fetched again through /.files/", l.URI, l.Range)
				}
			}
		})
	}
}

// An https:// directory has no listing: the loader's files are found by
// name (one probe each, when /.files/ is first looked at, not at mount),
// the rest of the checkpoint as on the Hub.
func TestFilesRemoteHTTPDir(t *testing.T) {
	dir, _ := remoteSet(t)
	addLoaderFiles(t, dir)
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(filepath.Dir(dir)))
	base := fmt.Sprintf("http://127.0.0.1:%d/%s/", ports[0], filepath.Base(dir))
	k := len(ng.Log(t))
	mnt, _ := remoteMount(t, base)
	onlyProbes(t, ng, k, "the mount", 4) // the index and three shards: nothing for /.files/ yet
	want := []string{indexName, shardName(0, 3), shardName(1, 3), shardName(2, 3),
		"config.json", "generation_config.json", "merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"}
	sameFileSet(t, base, filesOf(t, mnt), dirFiles(t, dir, want))
	unmountOK(t, mnt)
}
