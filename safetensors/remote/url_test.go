package remote

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

func TestParseLocation(t *testing.T) {
	t.Setenv("HF_ENDPOINT", "https://hub.example/")
	cases := []struct {
		in, display, resolve string // resolve: hf resolve URL at rev "r"
	}{
		{"https://u:secret@h.example/a/m.safetensors?X-Sig=secret", "https://h.example/a/m.safetensors?…", ""},
		{"http://h.example:8080/m.safetensors", "http://h.example:8080/m.safetensors", ""},
		{"hf://org/repo", "hf://org/repo", "https://hub.example/org/repo/resolve/r/"},
		{"hf://org/repo@refs%2Fpr%2F1/sub/m.safetensors", "hf://org/repo@refs%2Fpr%2F1/sub/m.safetensors", "https://hub.example/org/repo/resolve/r/sub/m.safetensors"},
		{"hf://datasets/org/data@v1/x y.safetensors", "hf://datasets/org/data@v1/x y.safetensors", "https://hub.example/datasets/org/data/resolve/r/x%20y.safetensors"},
		{"s3://bucket/pre/fix/m.safetensors", "s3://bucket/pre/fix/m.safetensors", ""},
	}
	for _, c := range cases {
		l, err := parseLocation(c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if d := l.display(""); d != c.display || strings.Contains(d, "secret") {
			t.Errorf("%s: display %q, want %q", c.in, d, c.display)
		}
		if c.resolve != "" {
			if u := hfResolveURL(l, "r").String(); u != c.resolve {
				t.Errorf("%s: resolve URL %q, want %q", c.in, u, c.resolve)
			}
		}
	}
	for _, bad := range []string{"model.safetensors", "ftp://h/x", "hf://org", "hf://org/repo/../x", "hf://org/repo@/x", "s3:///key", "https:///x", "https://u:secret@/x"} {
		_, err := parseLocation(bad)
		if !errors.Is(err, ErrBadURL) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: %v, want ErrBadURL without the secret", bad, err)
		}
	}
}

// user:password in an https URL is Basic auth for that host; it never
// shows in String or errors.
func TestHTTPBasicAuth(t *testing.T) {
	root := t.TempDir()
	want := genCheckpoint(t, filepath.Join(root, "m.safetensors"), 50, "w", 1000)
	_, ports := testsrv.StartNginx(t, "    if ($http_authorization != 'Basic dXNlcjpwNHNz') { return 401; }\n"+testsrv.StaticServer(root))
	opt, _ := testOpts(t)
	o := mustOpen(t, fmt.Sprintf("http://user:p4ss@127.0.0.1:%d/m.safetensors", ports[0]), opt)
	if strings.Contains(o.String(), "p4ss") {
		t.Fatalf("String %q shows the password", o.String())
	}
	sameBytes(t, "basic auth read", readAllAt(t, o, 1<<20), want)
	_, err := Open(ctxT(t), fmt.Sprintf("http://user:wrong@127.0.0.1:%d/m.safetensors", ports[0]), opt)
	if !errors.Is(err, ErrDenied) || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("wrong password: %v", err)
	}
}
