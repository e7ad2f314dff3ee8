package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Remote checkpoints through a real mount, against real servers on
// loopback: nginx for http:// and an hf:// Hub layout, versitygw for s3://.
// The truth is always the source file, parsed with encoding/json.

// remoteMount mounts url with a fresh cache (unless flags name one) and a
// log file it returns, and unmounts when the test ends.
func remoteMount(t testing.TB, url string, flags ...string) (mnt, logFile string) {
	t.Helper()
	logFile = filepath.Join(t.TempDir(), "daemon.log")
	args := []string{"--log-file", logFile}
	if !strings.Contains(strings.Join(flags, " "), "--cache-dir") {
		args = append(args, "--cache-dir", t.TempDir())
	}
	return mount(t, url, append(args, flags...)...), logFile
}

// sameTensors checks that every tensor of the local checkpoint file src
// reads back byte for byte under mnt (keys split at dots), and returns how
// many there were.
func sameTensors(t testing.TB, mnt, src string) int {
	t.Helper()
	entries, _, data := rawHeader(t, src)
	for k, e := range entries {
		got, err := os.ReadFile(filepath.Join(mnt, strings.ReplaceAll(k, ".", "/")))
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if !bytes.Equal(got, data[e.Offsets[0]:e.Offsets[1]]) {
			t.Fatalf("%s: %d bytes read differ from the source", k, len(got))
		}
	}
	return len(entries)
}

// procMount is mnt's line of /proc/mounts: source and options.
func procMount(t testing.TB, mnt string) (source, options string) {
	t.Helper()
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == mnt {
			return f[0], f[3]
		}
	}
	t.Fatalf("%s is not in /proc/mounts", mnt)
	return "", ""
}

func readLog(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// onlyProbes fails unless every request since k is a header probe.
func onlyProbes(t testing.TB, ng *testsrv.Nginx, k int, what string, want int) {
	t.Helper()
	l := ng.Since(t, k)
	for _, x := range l {
		if x.Range != "bytes=0-131071" {
			t.Fatalf("%s sent %+v, not a header probe", what, x)
		}
	}
	if len(l) != want {
		t.Fatalf("%s sent %d requests, want %d: %v", what, len(l), want, l)
	}
}

// An http:// checkpoint: every tensor byte-exact (one spans several 4 MiB
// chunks), the .npy view through numpy, /proc/mounts without the password,
// read-only whatever is tried, owner/mtime/statfs, ls and verify with
// header requests only, and a remount over the same cache with no request
// beyond the header.
func TestRemoteHTTPMount(t *testing.T) {
	if !isolated(t) {
		return
	}
	www := t.TempDir()
	src := filepath.Join(www, "m", "model.safetensors")
	os.MkdirAll(filepath.Dir(src), 0o755)
	tensors := append(flaxTensors(),
		raw("params.big.kernel", safetensors.U8, ctBytes(8, 9<<20+123), 9<<20+123),
		raw("params.Dense_0.scale", safetensors.BF16, ctBytes(9, 64), 32))
	if err := os.WriteFile(src, canonical(t, flaxMeta, tensors...), 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	os.Chtimes(src, mtime, mtime)
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(www))
	plain := fmt.Sprintf("http://127.0.0.1:%d/m/model.safetensors", ports[0])
	withPass := fmt.Sprintf("http://reader:s3cretPass@127.0.0.1:%d/m/model.safetensors", ports[0])
	cache := t.TempDir()

	k := len(ng.Log(t))
	mnt, logf := remoteMount(t, withPass, "--cache-dir", cache)
	onlyProbes(t, ng, k, "mount", 1)
	if n := sameTensors(t, mnt, src); n != len(tensors) {
		t.Fatalf("%d tensors, want %d", n, len(tensors))
	}
	if len(ng.Since(t, k)) < 3 {
		t.Fatalf("reading 9 MiB sent only %v", ng.Since(t, k))
	}
	for _, l := range ng.Since(t, k+1) {
		if l.Status != "206" || l.IfMatch == "" || !strings.HasPrefix(l.Auth, "Basic ") {
			t.Fatalf("tensor read %+v: want a 206 with If-Match and Basic auth", l)
		}
	}
	runPython(t, `
import sys, numpy as np, json, struct
m, src = sys.argv[1], sys.argv[2]
f = open(src, 'rb').read(); n = struct.unpack('<Q', f[:8])[0]
a, b = json.loads(f[8:8+n])['params.Dense_1.kernel']['data_offsets']
want = np.frombuffer(f[8+n+a:8+n+b], '<f4').reshape(16, 4)
assert (np.load(m + '/params/Dense_1/kernel.npy') == want).all()
`, mnt, src)

	source, opts := procMount(t, mnt)
	if source != plain || !strings.HasPrefix(opts, "ro,") {
		t.Errorf("/proc/mounts: source %q options %q, want %q and ro", source, opts, plain)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(mnt, "params/big/kernel"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != uint32(os.Getuid()) || st.Mode&0o777 != 0o444 || time.Unix(st.Mtim.Unix()).UTC() != mtime {
		t.Errorf("stat: uid %d mode %o mtime %v, want %d, 0444, %v (Last-Modified)", st.Uid, st.Mode&0o777, time.Unix(st.Mtim.Unix()).UTC(), os.Getuid(), mtime)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(src)
	if total := int64(sfs.Blocks) * sfs.Bsize; total < fi.Size() || total >= fi.Size()+sfs.Bsize || sfs.Bavail != 0 || sfs.Bfree != 0 {
		t.Errorf("statfs: %d blocks of %d, %d free, want the checkpoint's %d bytes and none free", sfs.Blocks, sfs.Bsize, sfs.Bavail, fi.Size())
	}

	// Read-only, however it is tried.
	kernel := filepath.Join(mnt, "params/Dense_0/kernel")
	for what, err := range map[string]error{
		"write":    os.WriteFile(kernel, make([]byte, 192), 0o644),
		"create":   os.WriteFile(filepath.Join(mnt, "params/new"), nil, 0o644),
		"mkdir":    os.Mkdir(filepath.Join(mnt, "d"), 0o755),
		"rename":   os.Rename(filepath.Join(mnt, "params/Dense_0"), filepath.Join(mnt, "params/D")),
		"remove":   os.Remove(kernel),
		"setxattr": unix.Setxattr(kernel, "user.safetensors.shape", []byte("[48]"), 0),
		"metadata": os.WriteFile(filepath.Join(mnt, "__metadata__"), []byte("{}"), 0o644),
		"truncate": os.Truncate(kernel, 0),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", what, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "__metadata__")); string(b) != `{"framework":"flax","step":"1200"}`+"\n" {
		t.Errorf("__metadata__ = %q", b)
	}
	unmountOK(t, mnt)
	for _, where := range []string{readLog(t, logf), string(mustRead(t, "/proc/mounts"))} {
		if strings.Contains(where, "s3cretPass") {
			t.Errorf("the password leaked: %s", where)
		}
	}

	// ls and verify of the URL: the header probe, nothing else.
	k = len(ng.Log(t))
	dataBytes := 0
	for _, g := range tensors {
		dataBytes += len(g.data)
	}
	if r := cli(t, "verify", withPass); r.code != 0 || r.stdout != fmt.Sprintf("%s: ok, %d tensors, %d bytes of tensor data, 2 metadata entries\n", plain, len(tensors), dataBytes) {
		t.Errorf("verify: %d %q %q", r.code, r.stdout, r.stderr)
	}
	remoteLs := cli(t, "ls", "--json", plain)
	if localLs := cli(t, "ls", "--json", src); remoteLs.code != 0 || remoteLs.stdout != localLs.stdout {
		t.Errorf("ls --json of the URL differs from the local file's: %q %q", remoteLs.stdout, remoteLs.stderr)
	}
	onlyProbes(t, ng, k, "verify and ls", 2)

	// A remount over the same cache: the probe, then every byte from the cache.
	k = len(ng.Log(t))
	mnt, _ = remoteMount(t, plain, "--cache-dir", cache)
	sameTensors(t, mnt, src)
	onlyProbes(t, ng, k, "a remount reading everything again", 1)
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// remoteSet is a three-shard set whose last shard holds a 5 MiB tensor,
// served from its own directory.
func remoteSet(t testing.TB) (dir string, parts [][]genTensor) {
	parts = [][]genTensor{
		{f32("model.embed_tokens.weight", 1, 16, 8), f32("model.layers.0.self_attn.q_proj.weight", 100, 8, 8)},
		{f32("model.layers.0.mlp.up_proj.weight", 200, 8, 4), raw("model.layers.0.input_layernorm.weight", safetensors.BF16, ctBytes(3, 16), 8)},
		{f32("model.norm.weight", 400, 8), raw("lm_head.weight", safetensors.F16, ctBytes(4, 5<<20), 1280, 2048)},
	}
	return writeShardedSet(t, map[string]string{"format": "pt"}, parts...), parts
}

// checkSharded checks a mounted set against its parts: bytes, the shard
// attribute, both metadata files.
func checkSharded(t testing.TB, mnt string, parts [][]genTensor) {
	t.Helper()
	total := 0
	for i, part := range parts {
		for _, g := range part {
			p := filepath.Join(mnt, strings.ReplaceAll(g.key, ".", "/"))
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, g.data) {
				t.Fatalf("%s: bytes differ", g.key)
			}
			if s := getxattr(t, p, "user.safetensors.shard"); s != shardName(i, len(parts)) {
				t.Errorf("%s: shard %q, want %q", g.key, s, shardName(i, len(parts)))
			}
			total += len(g.data)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "__metadata__")); string(b) != "{\"format\":\"pt\"}\n" {
		t.Errorf("__metadata__ = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(mnt, "__index_metadata__")); string(b) != fmt.Sprintf("{\"total_size\":%d}\n", total) {
		t.Errorf("__index_metadata__ = %q, want total_size %d", b, total)
	}
}

// A sharded set by its index URL and by its directory URL: one tree,
// byte-exact, headers fetched with one request per file; inconsistent sets
// refused by mount and verify before anything is mounted.
func TestRemoteShardedMount(t *testing.T) {
	if !isolated(t) {
		return
	}
	dir, parts := remoteSet(t)
	root := filepath.Dir(dir)
	ng, ports := testsrv.StartNginx(t, testsrv.StaticServer(root))
	base := fmt.Sprintf("http://127.0.0.1:%d/%s/", ports[0], filepath.Base(dir))
	for _, url := range []string{base + indexName, base} {
		k := len(ng.Log(t))
		mnt, _ := remoteMount(t, url)
		onlyProbes(t, ng, k, "mount of "+url, 1+len(parts))
		if s, _ := procMount(t, mnt); s != base+indexName {
			t.Errorf("source %q, want the index URL", s)
		}
		checkSharded(t, mnt, parts)
		unmountOK(t, mnt)
	}
	if r := cli(t, "verify", base); r.code != 0 || r.stdout != base+indexName+": ok, 3 shards, 6 tensors, 5243824 bytes of tensor data\n" {
		t.Errorf("verify: %d %q %q", r.code, r.stdout, r.stderr)
	}

	cases := []struct {
		name   string
		break_ func(dir string)
		says   []string
	}{
		{"missing shard", func(dir string) { os.Remove(filepath.Join(dir, shardName(1, 3))) },
			[]string{shardName(1, 3), "missing", "404", `"model.layers.0.input_layernorm.weight"`}},
		{"key not in the index", func(dir string) {
			os.WriteFile(filepath.Join(dir, shardName(2, 3)), canonical(t, nil, f32("stray.w", 1, 2)), 0o644)
		}, []string{"stray.w", "not listed"}},
		{"truncated shard", func(dir string) {
			p := filepath.Join(dir, shardName(0, 3))
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)-4], 0o644)
		}, []string{shardName(0, 3), "run past the end"}},
		{"shard escapes", func(dir string) {
			os.WriteFile(filepath.Join(dir, indexName), []byte(`{"weight_map": {"a": "../x.safetensors"}}`), 0o644)
		}, []string{"escapes", `"a"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, _ := remoteSet(t)
			os.Rename(dir, filepath.Join(root, "broken"))
			defer os.RemoveAll(filepath.Join(root, "broken"))
			c.break_(filepath.Join(root, "broken"))
			url := fmt.Sprintf("http://127.0.0.1:%d/broken/", ports[0])
			mnt := newMountpoint(t)
			r := cli(t, "mount", "--cache-dir", t.TempDir(), url, mnt)
			if mounted(t, mnt) {
				forceUnmount(t, mnt)
				t.Fatal("an invalid set was mounted")
			}
			for _, out := range []result{r, cli(t, "verify", url), cli(t, "ls", url)} {
				if out.code != exitInvalid {
					t.Errorf("exit %d, want %d: %s", out.code, exitInvalid, out.stderr)
				}
				for _, w := range c.says {
					if !strings.Contains(out.stderr, w) {
						t.Errorf("%q does not say %q", out.stderr, w)
					}
				}
			}
		})
	}
}

// A file that changes on the server under the mount: bytes not yet read
// fail with EIO (never the new version's bytes), and the daemon's log names
// the URL, the status and what to do.
func TestRemoteChangedObject(t *testing.T) {
	if !isolated(t) {
		return
	}
	www := t.TempDir()
	src := filepath.Join(www, "model.safetensors")
	// Far apart, so reading "a" cannot fetch "z" ahead: a read-ahead
	// window opens at 8 MiB and doubles only for a reader that keeps
	// going, so reading a 1 MiB tensor fetches at most its 4 MiB chunks
	// and 8 MiB beyond; z starts 24 MiB on.
	a, z := ctBytes(1, 1<<20), ctBytes(2, 1<<20)
	gen := func(z []byte) []byte {
		return canonical(t, nil, raw("a", safetensors.U8, a, 1<<20), raw("m_filler", safetensors.U8, make([]byte, 24<<20), 24<<20), raw("z", safetensors.U8, z, 1<<20))
	}
	if err := os.WriteFile(src, gen(z), 0o644); err != nil {
		t.Fatal(err)
	}
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(www))
	url := fmt.Sprintf("http://127.0.0.1:%d/model.safetensors", ports[0])
	mnt, logf := remoteMount(t, url)
	if got, err := os.ReadFile(filepath.Join(mnt, "a")); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("a before the change: %v", err)
	}
	// Another file of the same size and a new mtime: a new ETag.
	tmp := src + ".new"
	os.WriteFile(tmp, gen(ctBytes(3, 1<<20)), 0o644)
	later := time.Now().Add(time.Hour)
	os.Chtimes(tmp, later, later)
	if err := os.Rename(tmp, src); err != nil {
		t.Fatal(err)
	}
	_, err := os.ReadFile(filepath.Join(mnt, "z"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("reading z after the change: %v, want EIO", err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "a")); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("a (read before the change) now: %v", err)
	}
	l := readLog(t, logf)
	t.Logf("daemon log:\n%s", l)
	for _, w := range []string{url, "412", "the object changed since it was opened", "remount to see the new version", "read z"} {
		if !strings.Contains(l, w) {
			t.Errorf("the daemon log does not say %q:\n%s", w, l)
		}
	}
}

// hf://ORG/REPO: the repo root resolves to the index; the token goes to
// the endpoint only (the CDN refuses it), and never into /proc/mounts or
// the log.
func TestRemoteHFMount(t *testing.T) {
	dir, parts := remoteSet(t)
	const commit = "89abcdef0123456789abcdef0123456789abcdef"
	const token = "hf_MountTestToken42"
	testsrv.NoHFEnv(t)
	t.Setenv("HF_TOKEN", token)
	var es []testsrv.HubEntry
	for _, rev := range []string{"main", commit} {
		es = append(es, testsrv.HubEntry{Repo: "org/model", Rev: rev, Path: indexName, Commit: commit, File: filepath.Join(dir, indexName)})
		for i := range parts {
			n := shardName(i, len(parts))
			es = append(es, testsrv.HubEntry{Repo: "org/model", Rev: rev, Path: n, Commit: commit, File: filepath.Join(dir, n), Big: true})
		}
	}
	ng, _, _ := testsrv.StartHub(t, token, es...)
	mnt, logf := remoteMount(t, "hf://org/model")
	if s, _ := procMount(t, mnt); s != "hf://org/model/"+indexName {
		t.Errorf("source %q", s)
	}
	checkSharded(t, mnt, parts)
	unmountOK(t, mnt)
	for _, l := range ng.Log(t) {
		if !strings.Contains(l.URI, "/resolve/"+commit+"/") && !strings.Contains(l.URI, "/resolve/main/"+indexName) && !strings.HasPrefix(l.URI, "/blobs/") {
			t.Errorf("request %s is neither the first nor pinned to the commit", l.URI)
		}
	}
	if l := readLog(t, logf) + string(mustRead(t, "/proc/mounts")); strings.Contains(l, token) {
		t.Errorf("the token leaked: %s", l)
	}
}

// s3://: SigV4 with credentials from the environment and --s3-endpoint; a
// prefix holding an index mounts the set; a wrong secret is refused before
// mounting, without showing the secret.
func TestRemoteS3Mount(t *testing.T) {
	ep := testsrv.S3Server(t)
	testsrv.AWSEnv(t)
	single := canonical(t, flaxMeta, append(flaxTensors(), raw("params.big", safetensors.U8, ctBytes(5, 6<<20), 6<<20))...)
	testsrv.S3Put(t, "mounts", "run1/model.safetensors", single)
	src := filepath.Join(t.TempDir(), "model.safetensors")
	os.WriteFile(src, single, 0o644)
	dir, parts := remoteSet(t)
	for _, n := range []string{indexName, shardName(0, 3), shardName(1, 3), shardName(2, 3)} {
		testsrv.S3Put(t, "mounts", "sharded/"+n, mustRead(t, filepath.Join(dir, n)))
	}
	t.Setenv("AWS_ACCESS_KEY_ID", testsrv.S3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testsrv.S3Secret)

	mnt, _ := remoteMount(t, "s3://mounts/run1/model.safetensors", "--s3-endpoint", ep)
	sameTensors(t, mnt, src)
	if s, _ := procMount(t, mnt); s != "s3://mounts/run1/model.safetensors" {
		t.Errorf("source %q", s)
	}
	unmountOK(t, mnt)

	t.Setenv("AWS_ENDPOINT_URL", ep) // the environment instead of the flag
	mnt, _ = remoteMount(t, "s3://mounts/sharded/")
	checkSharded(t, mnt, parts)
	unmountOK(t, mnt)

	t.Setenv("AWS_SECRET_ACCESS_KEY", "WrongSecretValue")
	bad := newMountpoint(t)
	r := cli(t, "mount", "--cache-dir", t.TempDir(), "s3://mounts/run1/model.safetensors", bad)
	if mounted(t, bad) {
		forceUnmount(t, bad)
		t.Fatal("mounted with a wrong secret")
	}
	if r.code != exitInvalid || !strings.Contains(r.stderr, "403") || !strings.Contains(r.stderr, "s3://mounts/run1/model.safetensors") || strings.Contains(r.stderr, "WrongSecretValue") {
		t.Errorf("wrong secret: exit %d %q", r.code, r.stderr)
	}
}

// The cache flags are checked before anything starts.
func TestRemoteFlags(t *testing.T) {
	if !isolated(t) {
		return
	}
	mnt := newMountpoint(t)
	for _, c := range []struct{ size, says string }{{"lots", "not a size"}, {"1M", "below the minimum"}} {
		r := cli(t, "mount", "--cache-size", c.size, "http://127.0.0.1:1/x.safetensors", mnt)
		if r.code != exitUsage || !strings.Contains(r.stderr, c.says) {
			t.Errorf("--cache-size %s: exit %d %q", c.size, r.code, r.stderr)
		}
	}
	for in, want := range map[string]int64{"10G": 10 << 30, "512MiB": 512 << 20, "1.5T": 3 << 39, "4096": 4096, "64mb": 64 << 20} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}
