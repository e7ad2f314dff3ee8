package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// ls, verify, stats and diff of a checkpoint mounted read-write read the
// mounted state (the mount's files directory) and say so; without a files
// directory they refuse, naming the daemon and the mountpoint.
func TestCommandsOnMountedCheckpoint(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	orig := filepath.Join(t.TempDir(), "orig.safetensors")
	copyFile(t, ckpt, orig, 0o644)
	mnt := mount(t, ckpt)
	pid := strconv.Itoa(daemonOf(t, mnt))
	// Written, not written back: the file on disk still holds 7.
	if err := os.WriteFile(filepath.Join(mnt, "step_scale"), f32("", 9).data, 0); err != nil {
		t.Fatal(err)
	}
	note := func(verb string, r result) {
		t.Helper()
		for _, want := range []string{"mounted read-write", "pid " + pid, mnt, "mounted state", filepath.Join(mnt, ".files", "flax.safetensors")} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("%s of a mounted checkpoint: stderr %q does not say %q", verb, r.stderr, want)
			}
		}
	}
	r := cli(t, "stats", ckpt, "step_scale")
	if r.code != 0 || !strings.Contains(r.stdout, "  9  ") {
		t.Errorf("stats of the mounted checkpoint: exit %d, %q; want the edited value 9", r.code, r.stdout)
	}
	note("stats", r)
	r = cli(t, "verify", ckpt)
	if r.code != 0 || !strings.Contains(r.stdout, "ok, 7 tensors") {
		t.Errorf("verify of the mounted checkpoint: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	note("verify", r)
	r = cli(t, "ls", ckpt, "step_scale")
	if r.code != 0 || !strings.Contains(r.stdout, "step_scale") {
		t.Errorf("ls: exit %d %q", r.code, r.stdout)
	}
	note("ls", r)
	r = cli(t, "diff", orig, ckpt)
	if r.code != exitDiffer || !strings.Contains(r.stdout, "step_scale") || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("diff against the mounted state: exit %d %q", r.code, r.stdout)
	}
	note("diff", r)
	unmountOK(t, mnt)

	// Without a files directory: refused, with who and where.
	mnt = mount(t, ckpt, "--no-files")
	pid = strconv.Itoa(daemonOf(t, mnt))
	for _, args := range [][]string{{"stats", ckpt}, {"verify", ckpt}, {"ls", ckpt}} {
		r := cli(t, args...)
		if r.code != exitMount || !strings.Contains(r.stderr, "pid "+pid) || !strings.Contains(r.stderr, mnt) || !strings.Contains(r.stderr, "--no-files") {
			t.Errorf("%v of a checkpoint mounted --no-files: exit %d %q", args, r.code, r.stderr)
		}
	}
	if r := cli(t, "diff", orig, ckpt); r.code != exitTrouble || !strings.Contains(r.stderr, "pid "+pid) {
		t.Errorf("diff with a checkpoint mounted --no-files: exit %d %q", r.code, r.stderr)
	}
	unmountOK(t, mnt)

	// Read-only mounts change nothing on disk: no note.
	mount(t, ckpt, "--read-only")
	if r := cli(t, "stats", ckpt, "step_scale"); r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "  9  ") {
		t.Errorf("stats of a read-only mounted checkpoint: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
}

// mainFile, without reading the index, names the file Locate makes the
// main one: the index of a sharded checkpoint (given as its directory or
// itself), the one file of a plain one; "" for what is neither.
func TestMainFileMatchesLocate(t *testing.T) {
	sharded := writeShardedSet(t, nil, flaxTensors()[:3], flaxTensors()[3:])
	for _, ckpt := range []string{flaxModel(t), sharded, filepath.Join(sharded, indexName)} {
		loc, _, err := safetensors.Locate(ckpt)
		if err != nil {
			t.Fatal(err)
		}
		want := loc.Index
		if want == "" {
			want = loc.Paths[0]
		}
		if got := mainFile(ckpt); got != want {
			t.Errorf("mainFile(%s) = %q, want %q", ckpt, got, want)
		}
	}
	if got := mainFile(t.TempDir()); got != "" {
		t.Errorf("mainFile of an empty directory = %q, want \"\"", got)
	}
}

// A directory URL given without its trailing /: the error says it is a
// directory and which URL to give, whatever the server answered for it
// (a listing page, or a refusal).
func TestRemoteDirectoryWithoutSlash(t *testing.T) {
	www := t.TempDir()
	os.MkdirAll(filepath.Join(www, "listed", "m"), 0o755)
	os.MkdirAll(filepath.Join(www, "m"), 0o755)
	for _, d := range []string{filepath.Join(www, "listed", "m"), filepath.Join(www, "m")} {
		copyFile(t, flaxModel(t), filepath.Join(d, "model.safetensors"), 0o644)
	}
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(www)+"\n    location /listed/ { autoindex on; }")
	for _, dir := range []string{"listed/m", "m"} {
		url := fmt.Sprintf("http://127.0.0.1:%d/%s", ports[0], dir)
		for _, args := range [][]string{{"ls", url}, {"verify", url}, {"stats", url}} {
			r := cli(t, args...)
			if r.code != exitInvalid || !strings.Contains(r.stderr, "is a directory") || !strings.Contains(r.stderr, url+"/ holds model.safetensors") {
				t.Errorf("%v: exit %d %q; want it called a directory, with the URL to give", args, r.code, r.stderr)
			}
		}
		mnt := newMountpoint(t)
		r := cli(t, "mount", "--cache-dir", t.TempDir(), url, mnt)
		t.Cleanup(func() { forceUnmount(t, mnt) })
		if r.code != exitInvalid || !strings.Contains(r.stderr, url+"/ holds model.safetensors") {
			t.Errorf("mount %s: exit %d %q", url, r.code, r.stderr)
		}
		if r := cli(t, "ls", url+"/"); r.code != 0 {
			t.Errorf("ls %s/: exit %d %q", url, r.code, r.stderr)
		}
	}
	// A file that is missing is not called a directory.
	url := fmt.Sprintf("http://127.0.0.1:%d/nothing", ports[0])
	if r := cli(t, "ls", url); r.code != exitInvalid || strings.Contains(r.stderr, "directory") {
		t.Errorf("ls of a missing URL: exit %d %q", r.code, r.stderr)
	}
}
