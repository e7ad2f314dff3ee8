package remote

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

const hfTestToken = "hf_TestTokenSecret123"

func hfEntry(repo, rev, path, commit, file string, big bool) testsrv.HubEntry {
	return testsrv.HubEntry{Repo: repo, Rev: rev, Path: path, Commit: commit, File: file, Big: big}
}

const commitA = "0123456789abcdef0123456789abcdef01234567"

// hf://ORG/REPO at a branch: the repo root resolves to the index, the
// shards come from the CDN through the 302 without the token, and every
// request after the first names the commit.
func TestHFRepoRootSharded(t *testing.T) {
	testsrv.NoHFEnv(t)
	t.Setenv("HF_TOKEN", hfTestToken)
	dir := t.TempDir()
	shards, idx := genSharded(t, dir, 3, 300_000, 5, 100_000)
	var es []testsrv.HubEntry
	for _, rev := range []string{"main", commitA} {
		es = append(es, hfEntry("org/sharded", rev, "model.safetensors.index.json", commitA, filepath.Join(dir, "model.safetensors.index.json"), false))
		for name := range shards {
			es = append(es, hfEntry("org/sharded", rev, name, commitA, filepath.Join(dir, name), true))
		}
	}
	ng, _, ports := testsrv.StartHub(t, hfTestToken, es...)
	opt, logs := testOpts(t)
	o := mustOpen(t, "hf://org/sharded", opt)
	if !o.IsIndex() || o.Version() != commitA || o.String() != "hf://org/sharded/model.safetensors.index.json" {
		t.Fatalf("IsIndex %v Version %q String %q", o.IsIndex(), o.Version(), o.String())
	}
	b, err := o.ReadAll(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "index", b, idx)
	for _, name := range shardNames(t, b) {
		s, err := o.Sibling(ctxT(t), name)
		if err != nil {
			t.Fatal(err)
		}
		if s.Version() != commitA || s.String() != "hf://org/sharded@"+commitA+"/"+name {
			t.Fatalf("shard Version %q String %q", s.Version(), s.String())
		}
		h, err := s.Header(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		sameBytes(t, "shard header", h, shards[name][:headerLen(shards[name])])
		sameBytes(t, name, readAllAt(t, s, 256<<10), shards[name])
		s.Close()
	}
	origin, cdn := fmt.Sprint(ports[0]), fmt.Sprint(ports[1])
	var originShard, cdnReqs int
	for i, l := range ng.Log(t) {
		switch l.Port {
		case origin:
			if l.Auth != "Bearer "+hfTestToken {
				t.Fatalf("origin request without the token: %+v", l)
			}
			if i > 0 && !strings.Contains(l.URI, "/resolve/"+commitA+"/") {
				t.Fatalf("request after the first not pinned to the commit: %+v", l)
			}
			if strings.Contains(l.URI, "model-") {
				originShard++
			}
		case cdn:
			cdnReqs++
			if l.Auth != "-" || l.Status != "206" {
				t.Fatalf("CDN request %+v: want no Authorization and 206", l)
			}
		}
	}
	if originShard != len(shards) || cdnReqs <= len(shards) {
		t.Fatalf("%d origin requests for %d shards (want one each, later reads go to the CDN directly), %d CDN requests", originShard, len(shards), cdnReqs)
	}
	if strings.Contains(logs.String(), hfTestToken) {
		t.Fatal("the token is in the log")
	}
}

// A push to the branch after Open does not reach the Object: it reads the
// commit it resolved to. A revision named after @ and a path in a
// subdirectory resolve too.
func TestHFPinnedCommit(t *testing.T) {
	testsrv.NoHFEnv(t)
	dir := t.TempDir()
	orig := genCheckpoint(t, filepath.Join(dir, "c", "model.safetensors"), 10, "w", 600_000)
	genCheckpoint(t, filepath.Join(dir, "main", "model.safetensors"), 10, "w", 600_000)
	ng, _, _ := testsrv.StartHub(t, "",
		hfEntry("org/repo", "dev", "sub/dir/model.safetensors", commitA, filepath.Join(dir, "main", "model.safetensors"), false),
		hfEntry("org/repo", commitA, "sub/dir/model.safetensors", commitA, filepath.Join(dir, "c", "model.safetensors"), false),
	)
	opt, _ := testOpts(t)
	o := mustOpen(t, "hf://org/repo@dev/sub/dir/model.safetensors", opt)
	if o.Version() != commitA || o.String() != "hf://org/repo@dev/sub/dir/model.safetensors" {
		t.Fatalf("Version %q String %q", o.Version(), o.String())
	}
	// The push: dev now holds other bytes.
	genCheckpoint(t, filepath.Join(dir, "main", "model.safetensors"), 11, "w", 600_000)
	sameBytes(t, "read after a push", readAllAt(t, o, 1<<20), orig)
	for _, l := range ng.Since(t, 1) {
		if !strings.Contains(l.URI, "/resolve/"+commitA+"/sub/dir/") {
			t.Fatalf("request not pinned to the commit: %+v", l)
		}
	}
	// A repo root without an index opens model.safetensors.
	single := genCheckpoint(t, filepath.Join(dir, "s", "model.safetensors"), 12, "w", 10)
	testsrv.StartHub(t, "", hfEntry("org/single", "main", "model.safetensors", commitA, filepath.Join(dir, "s", "model.safetensors"), false))
	s := mustOpen(t, "hf://org/single", opt)
	if s.IsIndex() || s.Size() != int64(len(single)) {
		t.Fatalf("repo root without an index: IsIndex %v size %d", s.IsIndex(), s.Size())
	}
}

// The token file huggingface_hub writes at login is used when HF_TOKEN is
// not set; without any token a private repo is refused with a clear error
// that holds no token.
func TestHFTokenFile(t *testing.T) {
	testsrv.NoHFEnv(t)
	dir := t.TempDir()
	want := genCheckpoint(t, filepath.Join(dir, "model.safetensors"), 13, "w", 1000)
	testsrv.StartHub(t, hfTestToken, hfEntry("org/private", "main", "model.safetensors", commitA, filepath.Join(dir, "model.safetensors"), true))
	opt, _ := testOpts(t)
	_, err := Open(ctxT(t), "hf://org/private/model.safetensors", opt)
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "hf://org/private/model.safetensors") || !strings.Contains(err.Error(), "401") {
		t.Fatalf("no token: %v, want ErrDenied naming the URL and the 401", err)
	}
	home := os.Getenv("HF_HOME")
	writeFile(t, filepath.Join(home, "token"), []byte(hfTestToken+"\n"))
	o := mustOpen(t, "hf://org/private/model.safetensors", opt)
	sameBytes(t, "read with the token file", readAllAt(t, o, 1<<20), want)

	t.Setenv("HF_TOKEN", "hf_wrong")
	_, err = Open(ctxT(t), "hf://org/private/model.safetensors", opt)
	if !errors.Is(err, ErrDenied) || strings.Contains(err.Error(), "hf_wrong") {
		t.Fatalf("wrong token: %v", err)
	}
}
