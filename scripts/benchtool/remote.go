package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// remoteReads is section 6, issue 8 before remote mounts exist: the remote
// layer the mount will call (safetensors/remote), driven in this process
// against a real nginx on loopback, next to curl fetching the same bytes
// from the same server.
//
//   - sequential read of a 256 MiB object through Object.ReadAt in 1 MiB
//     reads (FUSE's largest) with a cold cache, vs curl of the same range;
//   - the same object read again: requests sent (from nginx's log; want 0);
//   - RssAnon of this process while streaming the large tensor (1 GiB in
//     the full run) through ReadAt: what the daemon will hold;
//   - opening an index and the headers of its shards, 8 at a time, vs one
//     curl fetching the same first 128 KiB of each, 8 transfers at a time;
//     requests per shard from nginx's log.
//
// Needs nginx (Debian nginx-light) and curl; the row is skipped with a note
// when either is missing.
func (b *bench) remoteReads() error {
	nginxBin, err := exec.LookPath("nginx")
	if err != nil {
		nginxBin = "/usr/sbin/nginx"
	}
	if _, err := os.Stat(nginxBin); err != nil {
		b.note("section 6 skipped: nginx is not installed (apt-get install nginx-light)")
		return nil
	}
	if _, err := exec.LookPath("curl"); err != nil {
		b.note("section 6 skipped: curl is not installed")
		return nil
	}
	dir := filepath.Join(b.work, "remote")
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(filepath.Join(www, "sharded"), 0o755); err != nil {
		return err
	}
	seqSize := min(int64(256<<20), b.cfg.bigBytes)
	if err := writeNoise(filepath.Join(www, "seq.bin"), seqSize, 61); err != nil {
		return err
	}
	if err := os.Symlink(b.bigPath, filepath.Join(www, "big.safetensors")); err != nil {
		return err
	}
	shards := 100
	if b.cfg.smoke {
		shards = 10
	}
	names, err := writeShards(filepath.Join(www, "sharded"), shards)
	if err != nil {
		return err
	}
	ng, err := startBenchNginx(nginxBin, dir, www)
	if err != nil {
		return err
	}
	defer ng.stop()
	base := "http://" + ng.addr

	// Sequential read, cold cache, vs curl of the same range.
	var ours, ref []time.Duration
	var again int
	for rep := range b.cfg.reps {
		if err := warm(filepath.Join(www, "seq.bin")); err != nil {
			return err
		}
		t0 := time.Now()
		out, err := exec.Command("curl", "-sf", "-o", "/dev/null", "-r", fmt.Sprintf("0-%d", seqSize-1), base+"/seq.bin").CombinedOutput()
		if err != nil {
			return fmt.Errorf("curl: %v: %s", err, out)
		}
		ref = append(ref, time.Since(t0))

		opt := remote.Options{CacheDir: filepath.Join(dir, fmt.Sprintf("cache%d", rep))}
		t0 = time.Now()
		o, err := remote.Open(context.Background(), base+"/seq.bin", opt)
		if err != nil {
			return err
		}
		if err := readAllRemote(o, filepath.Join(www, "seq.bin"), rep == 0); err != nil {
			o.Close()
			return err
		}
		ours = append(ours, time.Since(t0))
		k := ng.requests()
		if err := readAllRemote(o, "", false); err != nil {
			o.Close()
			return err
		}
		again = max(again, ng.requests()-k)
		o.Close()
		os.RemoveAll(opt.CacheDir)
	}
	b.add(row{section: "6", what: fmt.Sprintf("remote: seq read of a %s object, 1 MiB ReadAt, cold cache (Open included)", sizeName(seqSize)), ours: mbps(seqSize, medianDur(ours)), unit: "MB/s",
		refWhat: "curl of the same range from the same nginx", ref: mbps(seqSize, medianDur(ref)), kind: rate, barMin: 0.5})
	b.note("remote: requests sent by a second read of the %s object through the same Object: %d (the chunk cache serves it)", sizeName(seqSize), again)

	// RssAnon while streaming the large tensor.
	o, err := remote.Open(context.Background(), base+"/big.safetensors", remote.Options{CacheDir: filepath.Join(dir, "cache-big")})
	if err != nil {
		return err
	}
	before, _ := rssAnonKB(os.Getpid())
	self := &mount{pid: os.Getpid(), rssKB: before}
	self.startSampling()
	err = readAllRemote(o, "", false)
	peak := self.stopSampling()
	o.Close()
	os.RemoveAll(filepath.Join(dir, "cache-big"))
	if err != nil {
		return err
	}
	b.add(row{section: "6", what: fmt.Sprintf("remote: max RssAnon while streaming a %s object through ReadAt (this process)", sizeName(o.Size())), ours: mb(peak), unit: "MB",
		refWhat: "the same process before the stream", ref: mb(before), kind: cost, absMax: 64})

	// An index and its shards' headers vs curl of the same first bytes.
	k := ng.requests()
	t0 := time.Now()
	if err := openSharded(base+"/sharded/model.safetensors.index.json", filepath.Join(dir, "cache-sharded"), names); err != nil {
		return err
	}
	took := time.Since(t0)
	reqs := ng.requests() - k
	var urls []string
	for _, n := range names {
		urls = append(urls, base+"/sharded/"+n)
	}
	// One curl process, 8 transfers at a time, so the reference is the
	// fetching and not process starts.
	args := []string{"-sf", "--parallel", "--parallel-max", "8", "-r", "0-131071"}
	for _, u := range append([]string{base + "/sharded/model.safetensors.index.json"}, urls...) {
		args = append(args, "-o", "/dev/null", u)
	}
	t0 = time.Now()
	if out, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("curl --parallel: %v: %s", err, out)
	}
	curlTook := time.Since(t0)
	b.add(row{section: "6", what: fmt.Sprintf("remote: open an index + %d shard headers, 8 at a time", shards), ours: took.Seconds(), unit: "s",
		refWhat: "one curl --parallel-max 8 of the same first 128 KiB of each", ref: curlTook.Seconds(), kind: cost, barMax: 2})
	b.note("remote: %d requests for an index and %d shards (the issue allows 2 per shard plus the index: %d)", reqs, shards, 2*shards+1)
	return nil
}

func writeNoise(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		noise{seed}.ReadAt(buf[:n], off)
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// writeShards writes n shards of 64 small tensors each (a header of about
// 6 KiB) and their index.
func writeShards(dir string, n int) ([]string, error) {
	var names []string
	var wm []string
	for s := range n {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, n)
		var src []safetensors.Source
		for i := range 64 {
			key := fmt.Sprintf("model.layers.%d.mlp.experts.%d.weight", s, i)
			data := make([]byte, 4*256)
			fill(data, uint64(s*64+i))
			src = append(src, safetensors.Source{Key: key, DType: safetensors.F32, Shape: []uint64{256}, Data: safetensors.Bytes(data)})
			wm = append(wm, fmt.Sprintf("%q:%q", key, name))
		}
		if err := writeCheckpoint(filepath.Join(dir, name), src, map[string]string{"format": "pt"}); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	idx := `{"metadata":{},"weight_map":{` + strings.Join(wm, ",") + "}}"
	return names, os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(idx), 0o644)
}

// readAllRemote reads the whole object in 1 MiB ReadAts; with verify it
// compares each with the file nginx serves.
func readAllRemote(o *remote.Object, verify string, check bool) error {
	var f *os.File
	if check {
		var err error
		if f, err = os.Open(verify); err != nil {
			return err
		}
		defer f.Close()
	}
	p, q := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < o.Size(); off += int64(len(p)) {
		n, err := o.ReadAt(p, off)
		if n < len(p) && off+int64(n) != o.Size() {
			return fmt.Errorf("%s: ReadAt at %d: %d bytes, %v", o, off, n, err)
		}
		if f != nil {
			f.ReadAt(q[:n], off)
			if string(p[:n]) != string(q[:n]) {
				return fmt.Errorf("%s: wrong bytes at %d", o, off)
			}
		}
	}
	return nil
}

// openSharded is what a remote sharded mount will do before it answers:
// the index, then every shard's header, 8 shards at a time.
func openSharded(url, cacheDir string, want []string) error {
	ctx := context.Background()
	ix, err := remote.Open(ctx, url, remote.Options{CacheDir: cacheDir})
	if err != nil {
		return err
	}
	defer ix.Close()
	if _, err := ix.ReadAll(ctx); err != nil {
		return err
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	errs := make([]error, len(want))
	for i, name := range want {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			s, err := ix.Sibling(ctx, name)
			if err == nil {
				_, err = s.Header(ctx)
				s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// benchNginx is nginx serving www on a free loopback port, one access-log
// line per request.
type benchNginx struct {
	addr, log string
	cmd       *exec.Cmd
}

func startBenchNginx(bin, dir, www string) (*benchNginx, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o755)
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 512; }
http {
  access_log %[1]s/access.log;
  client_body_temp_path %[1]s/tmp; proxy_temp_path %[1]s/tmp; fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp; scgi_temp_path %[1]s/tmp;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  server { listen %[2]s; root %[3]s; }
}
`, dir, addr, www)
	cf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", cf, "-e", filepath.Join(dir, "error.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &benchNginx{addr: addr, log: filepath.Join(dir, "access.log"), cmd: cmd}
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return n, nil
		}
		if time.Now().After(deadline) {
			n.stop()
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, fmt.Errorf("nginx did not start: %s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *benchNginx) requests() int {
	b, _ := os.ReadFile(n.log)
	return strings.Count(string(b), "\n")
}

func (n *benchNginx) stop() {
	n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		n.cmd.Process.Kill()
		<-done
	}
}
