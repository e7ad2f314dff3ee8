package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A tensor's size is fixed by its dtype and shape, so asking for another
// one through an open file (coreutils truncate opens the file and calls
// ftruncate; dd with seek= and without conv=notrunc ftruncates its output
// to where it starts writing) is an edit that cannot be made: the command
// must fail, not exit 0 over a tensor that kept its bytes. Only O_TRUNC at
// open, with nothing written (the shell's `: > tensor`,
// np.memmap(mode='w+')), is no attempt at new bytes and closes without
// error.
func TestTruncateToAnotherSizeRefused(t *testing.T) {
	t.Parallel()
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt)
	p := func(s string) string { return filepath.Join(mnt, s) }
	want := flaxTensors()

	fails := func(why string, name string, args ...string) {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err == nil {
			t.Errorf("%s: %s %s exited 0, want a failure (%s)", why, name, strings.Join(args, " "), out)
		} else if !strings.Contains(string(out), "Invalid argument") && !strings.Contains(string(out), "File too large") {
			t.Errorf("%s: %s failed with %q, want EINVAL or EFBIG", why, name, out)
		}
	}
	fails("emptied", "truncate", "-s", "0", p("params/Dense_0/kernel"))
	fails("shrunk", "truncate", "-s", "8", p("params/Dense_0/bias"))
	fails("grown", "truncate", "-s", "1000", p("params/Dense_1/bias"))
	// dd opens with O_TRUNC only when it writes from the start; past
	// it, it ftruncates the output to where it starts.
	fails("cut by dd", "dd", "if=/dev/null", "of="+p("batch_stats/BatchNorm_0/mean"), "bs=4", "seek=2")
	runPython(t, `
import errno, sys
p = sys.argv[1] + '/batch_stats/BatchNorm_0/var'
f = open(p, 'r+b')
f.truncate(0)
try:
    f.close()
    raise SystemExit('close after truncate(0) succeeded')
except OSError as e:
    assert e.errno == errno.EINVAL, e
`, mnt)

	// What a truncating open may do: O_TRUNC and nothing written changes
	// nothing and succeeds; truncated and written whole, the tensor takes
	// the new bytes.
	runCmd(t, "sh", "-c", `: > "$1"`, "sh", p("step_scale"))
	src := filepath.Join(t.TempDir(), "new")
	dense1 := f32("params.Dense_1.kernel", -64, 16, 4)
	if err := os.WriteFile(src, dense1.data, 0o644); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "dd", "if="+src, "of="+p("params/Dense_1/kernel"), "bs=100")
	want[2] = dense1

	unmountOK(t, mnt)
	checkFile(t, ckpt, flaxMeta, want...)
}
