package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
)

// safejaxfs status: what each daemon publishes, and what status makes of
// mounts that hang or whose daemon is gone.

// statusOfMount runs status --json and returns the entry for mnt.
func statusOfMount(t testing.TB, mnt string) (mountReport, bool) {
	t.Helper()
	r := cli(t, "status", "--json")
	if r.code != 0 {
		t.Fatalf("status --json: exit %d %s", r.code, r.stderr)
	}
	var reports []mountReport
	if err := json.Unmarshal([]byte(r.stdout), &reports); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	real, err := filepath.EvalSymlinks(mnt)
	if err != nil {
		real = mnt
	}
	for _, rep := range reports {
		if rep.Mountpoint == real {
			return rep, true
		}
	}
	return mountReport{}, false
}

// statusUntil polls status until ok accepts mnt's entry (a daemon
// publishes changes within a fraction of a second).
func statusUntil(t testing.TB, mnt, what string, ok func(mountReport) bool) mountReport {
	t.Helper()
	var last mountReport
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		rep, found := statusOfMount(t, mnt)
		if found && ok(rep) {
			return rep
		}
		last = rep
	}
	t.Fatalf("status of %s never showed %s; last: %+v", mnt, what, last)
	return last
}

// statusNow runs status once and fails unless ok accepts mnt's entry:
// status asks each daemon to publish before it reads (probeStatus), so
// what was done before it ran is in what it prints.
func statusNow(t testing.TB, mnt, what string, ok func(mountReport) bool) mountReport {
	t.Helper()
	rep, found := statusOfMount(t, mnt)
	if !found || !ok(rep) {
		t.Fatalf("status of %s right after %s: %+v (found %v)", mnt, what, rep, found)
	}
	return rep
}

func TestStatusOfAMount(t *testing.T) {
	ckpt := flaxModel(t)
	logFile := filepath.Join(t.TempDir(), "daemon.log")
	mnt := mount(t, ckpt, "-o", "allow_other,umask=027", "--log-file", logFile)
	pid := daemonOf(t, mnt)
	rep, found := statusOfMount(t, mnt)
	if !found {
		t.Fatal("status does not list the mount")
	}
	abs, _ := filepath.Abs(ckpt)
	if rep.PID != pid || rep.Source != abs || rep.ReadOnly || rep.Remote || rep.State != stateMounted || rep.LogFile != logFile ||
		rep.Answering == nil || !*rep.Answering || rep.Problem != "" || rep.FilesDir != ".files" {
		t.Errorf("status right after mounting: %+v", rep)
	}
	if strings.Join(rep.Options, ",") != "allow_other,umask=027" {
		t.Errorf("options %q", rep.Options)
	}
	if rep.Pending == nil || rep.Pending.Changed != 0 || rep.Pending.Files != 0 {
		t.Errorf("pending before any edit: %+v", rep.Pending)
	}

	// An edit, durable in the log: pending until written back.
	f, err := os.OpenFile(filepath.Join(mnt, "params", "Dense_1", "bias"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(f32("", -1, 4).data)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.Remove(filepath.Join(mnt, "step_scale"))
	rep = statusNow(t, mnt, "the edits", func(r mountReport) bool {
		return r.Pending != nil && r.Pending.Changed == 1 && r.Pending.Removed == 1
	})
	if rep.Pending.Files != 1 || rep.Pending.Log == "" || rep.Pending.LogBytes <= 0 {
		t.Errorf("pending after an edit: %+v", rep.Pending)
	}
	if st, err := os.Stat(rep.Pending.Log); err != nil || st.Size() != rep.Pending.LogBytes {
		t.Errorf("the log status names (%s): %v", rep.Pending.Log, err)
	}
	text := cli(t, "status")
	for _, want := range []string{mnt, "pid " + strconv.Itoa(pid), "1 tensor changed, 1 removed, in 1 file", logFile} {
		if !strings.Contains(text.stdout, want) {
			t.Errorf("status does not say %q:\n%s", want, text.stdout)
		}
	}
	// A new file nothing gave a dtype (cp of raw bytes): named.
	if err := os.WriteFile(filepath.Join(mnt, "notes"), []byte("raw bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep = statusNow(t, mnt, "the untyped file", func(r mountReport) bool { return r.UntypedCount == 1 })
	if !slices.Equal(rep.Untyped, []string{"notes"}) {
		t.Errorf("untyped %q, want notes", rep.Untyped)
	}
	if text := cli(t, "status"); !strings.Contains(text.stdout, "1 tensor created without a dtype, saved as 1-D U8") || !strings.Contains(text.stdout, "notes") {
		t.Errorf("status does not name the untyped tensor:\n%s", text.stdout)
	}
	os.Remove(filepath.Join(mnt, "notes"))
	if r := cli(t, "sync", mnt); r.code != 0 {
		t.Fatal(r.stderr)
	}
	statusNow(t, mnt, "sync", func(r mountReport) bool {
		return r.Pending != nil && r.Pending.Changed == 0 && r.Pending.Removed == 0 && r.Pending.Files == 0
	})
	unmountOK(t, mnt)
	if _, found := statusOfMount(t, mnt); found {
		t.Error("status still lists the mount after unmount")
	}
}

// TestStatusOfGivenMountpoints: status MOUNTPOINT... lists only those;
// a path that is no safejaxfs mount is refused, naming it.
func TestStatusOfGivenMountpoints(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt := flaxModel(t)
	a := mount(t, ckpt, "--read-only")
	b := mount(t, ckpt, "--read-only")
	r := cli(t, "status", "--json", b)
	var reports []mountReport
	if err := json.Unmarshal([]byte(r.stdout), &reports); r.code != 0 || err != nil {
		t.Fatalf("status --json %s: exit %d %v %s", b, r.code, err, r.stderr)
	}
	if len(reports) != 1 || reports[0].Mountpoint != b {
		t.Errorf("status of %s listed %+v", b, reports)
	}
	if r := cli(t, "status", a, b); r.code != 0 || !strings.Contains(r.stdout, a) || !strings.Contains(r.stdout, b) {
		t.Errorf("status of both: exit %d:\n%s", r.code, r.stdout)
	}
	notMounted := t.TempDir()
	for path, want := range map[string]string{notMounted: notMounted + " is not mounted", "/": "/ is a "} {
		if r := cli(t, "status", a, path); r.code != exitMount || !strings.Contains(r.stderr, want) || r.stdout != "" {
			t.Errorf("status %s %s: exit %d, stdout %q, stderr %q; want exit %d saying %q", a, path, r.code, r.stdout, r.stderr, exitMount, want)
		}
	}
}

// A daemon that does not answer (stopped) and one that is gone (killed):
// status comes back anyway, and says which.
func TestStatusOfHungAndDeadMounts(t *testing.T) {
	mnt := mount(t, flaxModel(t), "--read-only")
	other := mount(t, flaxModel(t), "--read-only")
	pid := daemonOf(t, mnt)
	syscall.Kill(pid, syscall.SIGSTOP)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	// A signal takes effect when each thread next runs: until then, the
	// daemon could still answer status's probe.
	waitUntil(t, "the daemon to stop", func() bool { return allStopped(pid) })
	rep, found := statusOfMount(t, mnt)
	if !found || rep.Answering == nil || *rep.Answering || !strings.Contains(rep.Problem, "not answering") || rep.PID != pid {
		t.Errorf("status of a stopped daemon's mount: %+v", rep)
	}
	// Given a mountpoint, status probes that one only: it does not wait
	// on the stopped mount, which here it would for the minute each probe
	// may take.
	start := time.Now()
	r := cliEnv(t, []string{statusProbeEnv + "=1m"}, "status", "--json", other)
	var reports []mountReport
	if err := json.Unmarshal([]byte(r.stdout), &reports); r.code != 0 || err != nil || len(reports) != 1 || reports[0].Answering == nil || !*reports[0].Answering {
		t.Errorf("status --json %s: exit %d %v %s%s", other, r.code, err, r.stdout, r.stderr)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("status of %s alone took %v: it waited on the stopped mount", other, took)
	}
	var text bytes.Buffer
	printStatus(&text, []mountReport{rep})
	if !strings.Contains(text.String(), "not answering") {
		t.Errorf("status text: %s", text.String())
	}
	syscall.Kill(pid, syscall.SIGKILL)
	waitGone(t, pid)
	rep, found = statusOfMount(t, mnt)
	if !found || !strings.Contains(rep.Problem, "dead") || !strings.Contains(rep.Problem, "safejaxfs unmount") {
		t.Errorf("status of a killed daemon's mount: %+v", rep)
	}
}

// A user sees their own mounts only; root sees everyone's.
func TestStatusIsPerUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run as another user")
	}
	mnt := mount(t, flaxModel(t), "--read-only")
	dir, err := os.MkdirTemp("", "safejaxfs-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "safejaxfs")
	copyFile(t, os.Args[0], bin, 0o755)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "status")
	cmd.Env = []string{asCLIEnv + "=1", "GORACE=", "HOME=/nonexistent", "PATH=/usr/bin:/bin"}
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("status as nobody: %v", err)
	}
	if strings.Contains(out.String(), mnt) {
		t.Errorf("nobody's status lists root's mount:\n%s", out.String())
	}
	if _, found := statusOfMount(t, mnt); !found {
		t.Error("root's status does not list root's mount")
	}
}

// The status keeps the last PendingEdits while nothing happens, and takes
// it again after an edit, a commit to the log or a write-back: none of
// them may leave it showing what is no longer so.
func TestStatusPendingFollowsPersistence(t *testing.T) {
	ck, err := checkpoint.Open(flaxModel(t), checkpoint.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	s := &statusFile{ck: ck}
	if p := s.pendingEdits(); p != (checkpoint.Unwritten{}) {
		t.Errorf("right after open: %+v", p)
	}
	id := slices.Index(ck.Keys(), "step_scale")
	if err := ck.WriteAt(checkpoint.ID(id), []byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	if p := s.pendingEdits(); p.Changed != 1 || p.Log != "" {
		t.Errorf("after an edit: %+v", p)
	}
	if err := ck.Sync(); err != nil {
		t.Fatal(err)
	}
	if p := s.pendingEdits(); p.Changed != 1 || p.Log == "" || p.LogBytes <= 0 {
		t.Errorf("after a commit to the log: %+v", p)
	}
	if err := ck.Compact(); err != nil {
		t.Fatal(err)
	}
	if p := s.pendingEdits(); p != (checkpoint.Unwritten{}) {
		t.Errorf("after a write-back: %+v", p)
	}
}

// allStopped reports whether every thread of process pid is stopped.
func allStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		i := bytes.LastIndexByte(b, ')')
		if err != nil || i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}
