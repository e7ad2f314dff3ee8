package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/safejaxfs/safejaxfs/internal/listener"
	"github.com/safejaxfs/safejaxfs/safetensors"
)

// remoteSection is where the remote rows go in the table. Section 6 is
// "sharded scale" (another branch); these are the remote mounts of issue 8.
const remoteSection = "7"

// remoteMounts is section 7: remote checkpoints mounted with the CLI from a
// real nginx on loopback, read through the mount, next to curl fetching
// the same bytes from the same server in the same run.
//
//   - sequential read of a 256 MiB tensor through the mount (cold chunk
//     cache, readSize reads as in section 1) vs curl of the tensor's byte
//     range; then the requests a second read sends, in the same mount and
//     after a remount over the same cache (from nginx's log; want none);
//   - mount of a 100-shard checkpoint by its index URL, command start to
//     the mount answering, vs curl fetching the same bytes: the index,
//     then the first 128 KiB of each shard 8 transfers at a time (the
//     daemon's connection bound); requests per shard from nginx's log;
//   - the daemon's peak RssAnon while the 1 GiB tensor of section 1 streams
//     through the mount, vs its RssAnon right after mounting.
//
// Needs nginx (Debian nginx-light) and curl; the section is skipped with a
// note when either is missing.
func (b *bench) remoteMounts() error {
	nginxBin, err := exec.LookPath("nginx")
	if err != nil {
		nginxBin = "/usr/sbin/nginx"
	}
	if _, err := os.Stat(nginxBin); err != nil {
		b.note("section %s skipped: nginx is not installed (apt-get install nginx-light)", remoteSection)
		return nil
	}
	if _, err := exec.LookPath("curl"); err != nil {
		b.note("section %s skipped: curl is not installed", remoteSection)
		return nil
	}
	dir := filepath.Join(b.work, "remote")
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(filepath.Join(www, "sharded"), 0o755); err != nil {
		return err
	}
	seqSize := min(int64(256<<20), b.cfg.bigBytes)
	const seqKey = "model.seq.weight"
	seqPath := filepath.Join(www, "seq.safetensors")
	if err := writeCheckpoint(seqPath, []safetensors.Source{{Key: seqKey, DType: safetensors.U8, Shape: []uint64{uint64(seqSize)}, Data: noise{61}}}, nil); err != nil {
		return err
	}
	f, err := safetensors.Open(seqPath)
	if err != nil {
		return err
	}
	seqOff := f.DataOffset()
	f.Close()
	// The large tensor of section 1 when it was generated, else one of
	// the same size here.
	bigKey := b.bigKey
	if b.bigPath != "" {
		err = os.Symlink(b.bigPath, filepath.Join(www, "big.safetensors"))
	} else {
		bigKey = "model.stream.weight"
		err = writeCheckpoint(filepath.Join(www, "big.safetensors"), []safetensors.Source{{Key: bigKey, DType: safetensors.U8, Shape: []uint64{uint64(b.cfg.bigBytes)}, Data: noise{62}}}, nil)
	}
	if err != nil {
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
	cacheFlags := func(name string) []string {
		return []string{"--cache-dir", filepath.Join(dir, name)}
	}

	// Sequential read through the mount, cold chunk cache, vs curl.
	buf := make([]byte, b.cfg.readSize)
	var ours, ref []time.Duration
	var again, remount int
	for rep := range b.cfg.reps {
		if err := warm(seqPath); err != nil {
			return err
		}
		t0 := time.Now()
		out, err := exec.Command("curl", "-sf", "-o", "/dev/null", "-r", fmt.Sprintf("%d-%d", seqOff, seqOff+seqSize-1), base+"/seq.safetensors").CombinedOutput()
		if err != nil {
			return fmt.Errorf("curl: %v: %s", err, out)
		}
		ref = append(ref, time.Since(t0))

		cache := cacheFlags(fmt.Sprintf("cache-seq%d", rep))
		m, err := b.mount(base+"/seq.safetensors", cache...)
		if err != nil {
			return err
		}
		d, err := readMounted(m, seqKey, seqSize, buf, seqPath, seqOff, rep == 0)
		if err == nil {
			ours = append(ours, d)
			k := ng.requests()
			_, err = readMounted(m, seqKey, seqSize, buf, "", 0, false)
			again = max(again, ng.requests()-k)
		}
		if uerr := m.unmount(); err == nil {
			err = uerr
		}
		if err != nil {
			return err
		}
		// A remount over the same cache: its header probe, then nothing.
		k := ng.requests()
		if m, err = b.mount(base+"/seq.safetensors", cache...); err != nil {
			return err
		}
		_, err = readMounted(m, seqKey, seqSize, buf, "", 0, false)
		remount = max(remount, ng.requests()-k-1)
		if uerr := m.unmount(); err == nil {
			err = uerr
		}
		if err != nil {
			return err
		}
		os.RemoveAll(cache[1])
	}
	b.add(row{section: remoteSection, what: fmt.Sprintf("remote mount: seq read of a %s tensor through the mount, %s reads, cold chunk cache", sizeName(seqSize), sizeName(int64(b.cfg.readSize))),
		ours: mbps(seqSize, medianDur(ours)), unit: "MB/s",
		refWhat: "curl of the same byte range from the same nginx", ref: mbps(seqSize, medianDur(ref)), kind: rate, barMin: 0.5})
	b.note("remote mount: requests sent by a second read of the %s tensor: %d in the same mount, %d after a remount over the same cache (besides its header probe); the issue wants none", sizeName(seqSize), again, remount)

	// Mount of a sharded checkpoint vs curl of the same header bytes.
	var mountT, curlT []time.Duration
	var reqs int
	for rep := range b.cfg.reps {
		cache := cacheFlags(fmt.Sprintf("cache-sharded%d", rep))
		k := ng.requests()
		m, err := b.mount(base+"/sharded/model.safetensors.index.json", cache...)
		if err != nil {
			return err
		}
		mountT = append(mountT, m.took)
		reqs = max(reqs, ng.requests()-k)
		if err := m.unmount(); err != nil {
			return err
		}
		os.RemoveAll(cache[1])
		// The same bytes: the whole index (its shard names are needed
		// first), then one curl process fetching the first 128 KiB of
		// every shard, 8 transfers at a time (the daemon's bound).
		args := []string{"-sf", "--parallel", "--parallel-max", "8", "-r", "0-131071"}
		for _, n := range names {
			args = append(args, "-o", "/dev/null", base+"/sharded/"+n)
		}
		t0 := time.Now()
		if out, err := exec.Command("curl", "-sf", "-o", "/dev/null", base+"/sharded/model.safetensors.index.json").CombinedOutput(); err != nil {
			return fmt.Errorf("curl: %v: %s", err, out)
		}
		if out, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("curl --parallel: %v: %s", err, out)
		}
		curlT = append(curlT, time.Since(t0))
	}
	b.add(row{section: remoteSection, what: fmt.Sprintf("remote mount: %d-shard checkpoint by its index URL (command start to mount answering)", shards),
		ours: medianDur(mountT) * 1000, unit: "ms",
		refWhat: "curl of the index, then one curl --parallel-max 8 of the first 128 KiB of each shard", ref: medianDur(curlT) * 1000, kind: cost, barMax: 2})
	b.note("remote mount: %d requests to mount an index and %d shards (the issue allows 2 per shard plus the index: %d)", reqs, shards, 2*shards+1)

	// Daemon memory while the large tensor streams through the mount.
	cache := cacheFlags("cache-big")
	m, err := b.mount(base+"/big.safetensors", cache...)
	if err != nil {
		return err
	}
	m.startSampling()
	_, err = readMounted(m, bigKey, b.cfg.bigBytes, buf, "", 0, false)
	peak := m.stopSampling()
	if uerr := m.unmount(); err == nil {
		err = uerr
	}
	os.RemoveAll(cache[1])
	if err != nil {
		return err
	}
	b.add(row{section: remoteSection, what: fmt.Sprintf("remote mount: daemon max RssAnon while streaming the %s tensor through the mount", sizeName(b.cfg.bigBytes)),
		ours: mb(peak), unit: "MB", refWhat: "the same daemon right after mounting", ref: mb(m.rssKB), kind: cost, absMax: 64})
	return nil
}

// readMounted reads tensor key (size bytes) through the mount in reads of
// len(buf) and returns the time; with check it compares every read with
// the source file's bytes at srcOff.
func readMounted(m *mount, key string, size int64, buf []byte, src string, srcOff int64, check bool) (time.Duration, error) {
	f, err := os.Open(keyPath(m.dir, key))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if !check {
		return readSeq(f, 0, size, buf)
	}
	s, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	// Checked after the timed read, so the comparison costs nothing.
	d, err := readSeq(f, 0, size, buf)
	if err != nil {
		return 0, err
	}
	want := make([]byte, len(buf))
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := int(min(int64(len(buf)), size-off))
		if _, err := f.ReadAt(buf[:n], off); err != nil && err != io.EOF {
			return 0, err
		}
		if _, err := s.ReadAt(want[:n], srcOff+off); err != nil && err != io.EOF {
			return 0, err
		}
		if !bytes.Equal(buf[:n], want[:n]) {
			return 0, fmt.Errorf("%s: wrong bytes at %d through the mount", key, off)
		}
	}
	return d, nil
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
	addr, port := l.Addr().String(), l.Addr().(*net.TCPAddr).Port
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
	// Ready once this nginx holds the port: another program may (see
	// internal/listener), and answer a connection.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if listener.HeldBy(cmd.Process.Pid, port) {
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
