package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

// The progress line: what it says, when it shows, and each kind of long
// work that shows one.

func TestProgressLine(t *testing.T) {
	var out bytes.Buffer
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	p := &progress{w: &out, verb: "stats", unit: unitBytes, total: 4 << 30, done: 1 << 30, start: start, noun: "tensor", item: 3, of: 12}
	p.draw(start.Add(10 * time.Second))
	want := "\r\033[Kstats: 1.0 GiB of 4.0 GiB (25%), tensor 3 of 12, 102.4 MiB/s, 0:30 left"
	if out.String() != want {
		t.Errorf("bytes: %q\nwant   %q", out.String(), want)
	}
	out.Reset()
	p = &progress{w: &out, verb: "fetching headers", unit: unitCount, noun: "shards", total: 163, done: 40, start: start}
	p.draw(start.Add(4 * time.Second))
	want = "\r\033[Kfetching headers: 40 of 163 shards (24%), 10/s, 0:12 left"
	if out.String() != want {
		t.Errorf("count: %q\nwant   %q", out.String(), want)
	}
	out.Reset()
	p.finish()
	if out.String() != "\r\033[K" {
		t.Errorf("finish: %q", out.String())
	}
	if clock(3723*time.Second) != "1:02:03" || clock(7*time.Second) != "0:07" {
		t.Error(clock(3723*time.Second), clock(7*time.Second))
	}
	var nilP *progress // off: every method is a no-op
	nilP.add(1)
	nilP.set(1, 2, "")
	nilP.finish()
}

// The headers of a remote sharded checkpoint arriving, for ls, verify and
// mount: on stderr with --progress, not at all without it when stderr is
// not a terminal.
func TestRemoteHeaderProgress(t *testing.T) {
	dir, _ := remoteSet(t)
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(filepath.Dir(dir)))
	url := fmt.Sprintf("http://127.0.0.1:%d/%s/", ports[0], filepath.Base(dir))
	for _, args := range [][]string{{"ls", "--progress", url}, {"verify", "--progress", url}} {
		r := cli(t, args...)
		if r.code != 0 || !strings.Contains(r.stderr, "fetching headers: 3 of 3 shards (100%)") || !strings.HasSuffix(r.stderr, "\r\033[K") {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	if r := cli(t, "ls", url); r.code != 0 || r.stderr != "" {
		t.Errorf("ls without --progress, stderr a pipe: %q", r.stderr)
	}
	mnt := newMountpoint(t)
	cache := t.TempDir()
	r := cli(t, "mount", "--progress", "--cache-dir", cache, url, mnt)
	t.Cleanup(func() { forceUnmount(t, mnt) })
	if r.code != 0 || !strings.Contains(r.stderr, "fetching headers: 3 of 3 shards (100%)") {
		t.Errorf("mount --progress: exit %d, stderr %q", r.code, r.stderr)
	}
	// The remote mount's status: its cache.
	rep := statusUntil(t, mnt, "the cache", func(r mountReport) bool { return r.Cache != nil })
	if !rep.Remote || !rep.ReadOnly || rep.Cache.Dir != cache || rep.Cache.Limit != 10<<30 || rep.Pending != nil {
		t.Errorf("status of a remote mount: %+v %+v", rep, rep.Cache)
	}
	sameSharded := cli(t, "ls", url+indexName)
	if sameSharded.code != 0 {
		t.Fatal(sameSharded.stderr)
	}
	// Reading fills the cache, which the status counts (at its next scan:
	// the first one came with the mount).
	filepath.WalkDir(mnt, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.Contains(p, "/.files") {
			os.ReadFile(p)
		}
		return nil
	})
	if used := dirUsage(filepath.Join(cache, "chunks-v1")); used < 5<<20 {
		t.Errorf("the cache holds %d bytes after reading 5 MiB", used)
	}
}

// On a terminal, remote work shows progress by itself; --quiet silences it.
func TestProgressOnTerminalAndQuiet(t *testing.T) {
	dir, _ := remoteSet(t)
	_, ports := testsrv.StartNginx(t, testsrv.StaticServer(filepath.Dir(dir)))
	url := fmt.Sprintf("http://127.0.0.1:%d/%s/", ports[0], filepath.Base(dir))
	onTTY := func(args ...string) string {
		master, tty := openPTY(t)
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), asCLIEnv+"=1")
		cmd.Stderr = tty
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		tty.Close()
		got := make(chan string)
		go func() {
			var b bytes.Buffer
			buf := make([]byte, 4096)
			for {
				k, err := master.Read(buf)
				b.Write(buf[:k])
				if err != nil {
					break
				}
			}
			got <- b.String()
		}()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		select {
		case s := <-got:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("the terminal did not close")
		}
		return ""
	}
	if s := onTTY("ls", url); !strings.Contains(s, "fetching headers: 3 of 3 shards") {
		t.Errorf("ls of a remote set on a terminal: %q", s)
	}
	if s := onTTY("ls", "-q", url); s != "" {
		t.Errorf("ls -q on a terminal: %q", s)
	}
}

// unmount and wait show a daemon's write-back from its status file.
func TestWriteBackProgressFromStatus(t *testing.T) {
	dir, _, err := stateDir()
	if err != nil {
		t.Fatal(err)
	}
	start, err := processStart(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	st := mountStatus{Format: statusFormat, PID: os.Getpid(), Start: start, UID: os.Geteuid(), Mountpoint: "/somewhere",
		State: stateFinishing, WriteBack: &progressStatus{Done: 3 << 30, Total: 12 << 30}}
	b, _ := json.Marshal(st)
	p := filepath.Join(dir, "test-writeback"+statusSuffix)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	var out bytes.Buffer
	progressOut = &out
	defer func() { progressOut = os.Stderr }()
	w := &waitProgress{pf: progressFlags{force: true}, said: true}
	w.show(os.Getpid())
	w.finish()
	want := fmt.Sprintf("writing back: 3.0 GiB of 12.0 GiB (25%%) (pid %d)", os.Getpid())
	if !strings.Contains(out.String(), want) {
		t.Errorf("progress %q, want %q", out.String(), want)
	}
	// --quiet: nothing.
	out.Reset()
	w = &waitProgress{pf: progressFlags{quiet: true}, said: true}
	w.show(os.Getpid())
	w.finish()
	if out.Len() != 0 {
		t.Errorf("--quiet: %q", out.String())
	}
}
