package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// mount is a live safejaxfs mount made through the CLI.
type mount struct {
	b       *bench
	dir     string
	pid     int           // the daemon
	took    time.Duration // command start to the mount answering
	rssKB   int64         // daemon RssAnon right after mounting
	sampler *sampler
}

// mount runs `safejaxfs mount CKPT MNT` and times it from command start to
// the mountpoint answering as the FUSE mount (the CLI returns only then; the
// stat makes sure). The mount is registered before the command runs, so
// unmountAll reaches it whatever fails.
func (b *bench) mount(ckpt string, flags ...string) (*mount, error) {
	b.mu.Lock()
	b.mountSeq++
	dir := filepath.Join(b.work, fmt.Sprintf("mnt%d", b.mountSeq))
	if b.mounts == nil {
		b.mounts = map[string]bool{}
	}
	b.mounts[dir] = true
	b.mu.Unlock()
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	var parent unix.Stat_t
	if err := unix.Stat(b.work, &parent); err != nil {
		return nil, err
	}
	args := append(append([]string{"mount"}, flags...), ckpt, dir)
	t0 := time.Now()
	out, err := exec.Command(b.cli, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("safejaxfs %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, fmt.Errorf("mounted %s, but: %w", dir, err)
	}
	took := time.Since(t0)
	if st.Dev == parent.Dev {
		return nil, fmt.Errorf("safejaxfs mount returned, but %s is not a mountpoint", dir)
	}
	m := &mount{b: b, dir: dir, took: took}
	if b.raKB > 0 {
		if err := setReadAhead(dir, b.raKB); err != nil {
			m.unmount()
			return nil, fmt.Errorf("--read-ahead-kb: %w", err)
		}
	}
	buf := make([]byte, 32)
	n, err := unix.Getxattr(dir, "user.safejaxfs.pid", buf)
	if err != nil {
		m.unmount()
		return nil, fmt.Errorf("getxattr user.safejaxfs.pid %s: %w", dir, err)
	}
	if m.pid, err = strconv.Atoi(string(buf[:n])); err != nil {
		m.unmount()
		return nil, fmt.Errorf("daemon pid %q: %w", buf[:n], err)
	}
	m.rssKB, _ = rssAnonKB(m.pid)
	return m, nil
}

// unmount runs `safejaxfs unmount`, which waits for the daemon to exit;
// if that fails the mount is detached lazily so nothing is left behind.
func (m *mount) unmount() error {
	m.stopSampling()
	return m.b.unmountDir(m.dir)
}

func (b *bench) unmountDir(dir string) error {
	out, err := exec.Command(b.cli, "unmount", dir).CombinedOutput()
	if err != nil && isMounted(dir) {
		exec.Command(b.cli, "unmount", "--lazy", "--force", dir).Run()
		if isMounted(dir) {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	}
	b.mu.Lock()
	if !isMounted(dir) {
		delete(b.mounts, dir)
		os.Remove(dir)
	}
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("safejaxfs unmount %s: %v: %s", dir, err, bytes.TrimSpace(out))
	}
	return nil
}

// unmountAll is the safety net: every mount this run made and did not
// unmount yet.
func (b *bench) unmountAll() {
	b.mu.Lock()
	dirs := make([]string, 0, len(b.mounts))
	for d := range b.mounts {
		dirs = append(dirs, d)
	}
	b.mu.Unlock()
	for _, d := range dirs {
		if isMounted(d) {
			b.unmountDir(d)
		}
	}
}

func isMounted(dir string) bool {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && fields[1] == dir {
			return true
		}
	}
	return false
}

// rssAnonKB reads RssAnon (the daemon's own memory, not the mapped
// checkpoint pages it serves from) of a process.
func rssAnonKB(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return statusField(b, "RssAnon:")
}

func statusField(status []byte, name string) (int64, error) {
	for line := range bytes.Lines(status) {
		if rest, ok := bytes.CutPrefix(line, []byte(name)); ok {
			f := strings.Fields(string(rest))
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/PID/status", name)
}

// sampler polls a process's RssAnon and keeps the maximum: VmHWM would
// count the checkpoint pages the daemon maps, which are page cache, not
// memory it holds.
type sampler struct {
	stop chan struct{}
	done sync.WaitGroup
	mu   sync.Mutex
	max  int64
}

func (m *mount) startSampling() {
	s := &sampler{stop: make(chan struct{}), max: m.rssKB}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if kb, err := rssAnonKB(m.pid); err == nil {
				s.mu.Lock()
				s.max = max(s.max, kb)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	m.sampler = s
}

// stopSampling ends sampling and returns the maximum RssAnon seen (KiB).
func (m *mount) stopSampling() int64 {
	s := m.sampler
	if s == nil {
		return m.rssKB
	}
	m.sampler = nil
	close(s.stop)
	s.done.Wait()
	if kb, err := rssAnonKB(m.pid); err == nil {
		s.max = max(s.max, kb)
	}
	return s.max
}

// vmHWMKB is the process's peak RSS, mapped file pages included.
func vmHWMKB(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	v, _ := statusField(b, "VmHWM:")
	return v
}

func mb(kb int64) float64 { return float64(kb) * 1024 / 1e6 }
