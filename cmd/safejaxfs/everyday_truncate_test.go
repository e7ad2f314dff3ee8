package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Everyday tools that rewrite a tensor file whole: shell redirection, dd,
// tee, cp, Python open('wb'). They open with O_TRUNC, often dup the
// descriptor, fork, and close the copies in any order. A truncating open is
// one transaction per open file description: a right-size rewrite succeeds
// with exit 0, a wrong-size one fails and changes nothing.

// bigModel has tensors large enough that a short write is visibly short.
func bigModel(t testing.TB) (string, []genTensor) {
	tensors := []genTensor{
		f32("params.Dense_0.bias", 1, 512),    // 2048 bytes
		f32("params.Dense_0.kernel", 2, 2560), // 10240 bytes
		f32("params.Dense_1.bias", 3, 512),
	}
	return writeCheckpoint(t, "big.safetensors", nil, tensors...), tensors
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// shell runs a bash command line and returns its exit code and stderr.
func shell(t testing.TB, script string) (int, string) {
	t.Helper()
	cmd := exec.Command("bash", "-c", script)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), errb.String()
		}
		t.Fatalf("bash -c %q: %v", script, err)
	}
	return 0, errb.String()
}

func writeTemp(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRewriteWholeWithEverydayTools(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt, tensors := bigModel(t)
	mnt := mount(t, ckpt)
	bias := filepath.Join(mnt, "params/Dense_0/bias")
	kernel := filepath.Join(mnt, "params/Dense_0/kernel")
	bias1 := filepath.Join(mnt, "params/Dense_1/bias")

	expect := func(path string, want []byte, what string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(got, want) {
			n := min(len(got), 8)
			t.Errorf("%s: %s holds %d bytes starting % x, want %d bytes starting % x", what, path, len(got), got[:n], len(want), want[:8])
		}
	}

	// Wrong sizes: nothing changes. bash ignores the close error of a
	// builtin's redirection, so only the content can be checked there.
	shell(t, "printf abcd > "+bias)
	expect(bias, tensors[0].data, "printf abcd > bias")
	short := writeTemp(t, "short", randomBytes(1024, 1))
	if code, _ := shell(t, "head -c 1024 "+short+" > "+kernel); code == 0 {
		t.Error("head -c 1024 > a 10240-byte tensor exited 0")
	}
	expect(kernel, tensors[1].data, "head -c 1024 > kernel")
	if code, _ := shell(t, "dd if="+short+" of="+kernel+" status=none"); code == 0 {
		t.Error("dd of 1024 bytes into a 10240-byte tensor exited 0")
	}
	expect(kernel, tensors[1].data, "short dd")
	if code, _ := shell(t, "cp "+short+" "+bias); code == 0 {
		t.Error("cp of 1024 bytes over a 2048-byte tensor exited 0")
	}
	expect(bias, tensors[0].data, "short cp")

	// Right sizes, every tool: exit 0 and the new bytes.
	wantBias := randomBytes(2048, 2)
	wantKernel := randomBytes(10240, 3)
	src := writeTemp(t, "bias.bin", wantBias)
	ksrc := writeTemp(t, "kernel.bin", wantKernel)
	for _, c := range []struct{ what, script string }{
		{"cat >", "cat " + src + " > " + bias},
		{"dd", "dd if=" + ksrc + " of=" + kernel + " bs=1000 status=none"},
		{"tee", "tee " + bias + " < " + src + " > /dev/null"},
		{"cp", "cp " + ksrc + " " + kernel},
		// Two children write through one inherited descriptor, each
		// closing its copy at a wrong size before the shell's last close.
		{"subshells", "{ head -c 1000 " + src + "; tail -c +1001 " + src + "; } > " + bias1},
		{"exec fd", "exec 7> " + bias + "; cat " + src + " >&7; exec 7>&-"},
	} {
		if code, stderr := shell(t, c.script); code != 0 {
			t.Errorf("%s: exit %d: %s", c.what, code, stderr)
		}
	}
	expect(bias, wantBias, "right-size rewrites")
	expect(kernel, wantKernel, "right-size rewrites")
	expect(bias1, wantBias, "right-size rewrite by two children")
	runPython(t, `
import sys
p, want = sys.argv[1], open(sys.argv[2], 'rb').read()
with open(p, 'wb') as f:
    f.write(want[:100])
    f.write(want[100:])
assert open(p, 'rb').read() == want
try:
    with open(p, 'wb') as f:
        f.write(want[:100])
except OSError:
    pass
else:
    raise SystemExit('a short open(wb) rewrite closed without error')
assert open(p, 'rb').read() == want
`, kernel, ksrc)

	// The reason for the last refusal is kept for the user.
	if msg := getxattr(t, mnt, "user.safejaxfs.error"); !strings.Contains(msg, "params.Dense_0.kernel") || !strings.Contains(msg, "10240") {
		t.Errorf("user.safejaxfs.error after a short rewrite: %q", msg)
	}
	unmountOK(t, mnt)
	checkFile(t, ckpt, nil,
		raw("params.Dense_0.bias", safetensors.F32, wantBias, 512),
		raw("params.Dense_0.kernel", safetensors.F32, wantKernel, 2560),
		raw("params.Dense_1.bias", safetensors.F32, wantBias, 512),
	)
}

// TestRewriteBelongsToItsOpener: a rewrite in progress belongs to the open
// file description that truncated; another descriptor opened and closed
// meanwhile neither fails nor decides it.
func TestRewriteBelongsToItsOpener(t *testing.T) {
	if !isolated(t) {
		return
	}
	ckpt, tensors := bigModel(t)
	mnt := mount(t, ckpt)
	p := filepath.Join(mnt, "params/Dense_0/bias")
	want := randomBytes(2048, 4)
	a, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write(want[:1024]); err != nil {
		t.Fatal(err)
	}
	// Everyone else still sees the tensor (a stat arrives with no file
	// handle; go-fuse hands over whichever is open).
	if st, err := os.Stat(p); err != nil || st.Size() != 2048 {
		t.Errorf("stat during another's rewrite: %v bytes, %v; want the tensor's 2048", st.Size(), err)
	}
	b, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("closing another descriptor that wrote nothing: %v", err)
	}
	if _, err := a.Write(want[1024:]); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("closing the rewrite at the right size: %v", err)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, want) {
		t.Error("the tensor does not hold the rewrite")
	}
	// An abandoned rewrite changes nothing, and leaves no trace in the
	// kernel's cache either.
	p1 := filepath.Join(mnt, "params/Dense_1/bias")
	c, err := os.OpenFile(p1, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(want[:10])
	if err := c.Close(); err == nil {
		t.Error("closing a 10-byte rewrite of a 2048-byte tensor succeeded")
	}
	if got, _ := os.ReadFile(p1); !bytes.Equal(got, tensors[2].data) {
		t.Errorf("after an abandoned rewrite the tensor reads as %d bytes, not its old ones", len(got))
	}
	if st, err := os.Stat(p1); err != nil || st.Size() != 2048 {
		t.Errorf("after an abandoned rewrite: stat %v %v, want 2048 bytes", st.Size(), err)
	}
	unmountOK(t, mnt)
	checkFile(t, ckpt, nil,
		raw("params.Dense_0.bias", safetensors.F32, want, 512),
		tensors[1], tensors[2])
}
