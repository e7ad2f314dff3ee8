package remote

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/safejaxfs/safejaxfs/internal/testsrv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testsrv.StopS3()
	os.Exit(code)
}

// s3://BUCKET/KEY with env credentials and AWS_ENDPOINT_URL: a single file
// and a prefix holding a sharded checkpoint, every byte compared, through
// a counting proxy (the If-Match on every GET, a repeat read with no
// request).
func TestS3EnvCredentials(t *testing.T) {
	ep := testsrv.S3Server(t)
	testsrv.AWSEnv(t)
	dir := t.TempDir()
	single := genCheckpoint(t, filepath.Join(dir, "single.safetensors"), 30, "w", 1_200_000, 3)
	etag := testsrv.S3Put(t, "models", "single/model.safetensors", single)
	shards, idx := genSharded(t, filepath.Join(dir, "sharded"), 2, 100_000, 2)
	testsrv.S3Put(t, "models", "sharded/model.safetensors.index.json", idx)
	for name, b := range shards {
		testsrv.S3Put(t, "models", "sharded/"+name, b)
	}
	var mu sync.Mutex
	var seen []*http.Request
	p := startFaultProxy(t, ep, func(_ int, r *http.Request) fault {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
		return pass
	})
	t.Setenv("AWS_ACCESS_KEY_ID", testsrv.S3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testsrv.S3Secret)
	t.Setenv("AWS_ENDPOINT_URL", p.srv.URL)
	opt, logs := testOpts(t)

	o := mustOpen(t, "s3://models/single/model.safetensors", opt)
	if o.Version() != etag || o.Size() != int64(len(single)) || o.String() != "s3://models/single/model.safetensors" {
		t.Fatalf("Version %q (want %q) Size %d String %q", o.Version(), etag, o.Size(), o.String())
	}
	h, err := o.Header(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "header", h, single[:headerLen(single)])
	sameBytes(t, "s3 read", readAllAt(t, o, 1<<20), single)
	k := p.requests()
	sameBytes(t, "s3 repeat read", readAllAt(t, o, 1<<20), single)
	if p.requests() != k {
		t.Fatalf("a repeat read sent %d requests", p.requests()-k)
	}
	mu.Lock()
	for i, r := range seen {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential="+testsrv.S3Access+"/") || r.URL.Path != "/models/single/model.safetensors" {
			t.Fatalf("request %d not signed or not path-style: %s %v", i, r.URL, r.Header)
		}
		if i > 0 && r.Header.Get("If-Match") != etag {
			t.Fatalf("request %d without If-Match %s", i, etag)
		}
	}
	mu.Unlock()

	ix := mustOpen(t, "s3://models/sharded/", opt)
	if !ix.IsIndex() {
		t.Fatal("the prefix did not resolve to its index")
	}
	b, err := ix.ReadAll(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "index", b, idx)
	for _, name := range shardNames(t, b) {
		s, err := ix.Sibling(ctxT(t), name)
		if err != nil {
			t.Fatal(err)
		}
		sameBytes(t, name, readAllAt(t, s, 512<<10), shards[name])
		s.Close()
	}
	if strings.Contains(logs.String(), testsrv.S3Secret) {
		t.Fatal("the secret is in the log")
	}

	// Keys with characters S3 and Go escape differently still sign right.
	odd := "odd keys/a+b=c!(1).safetensors"
	testsrv.S3Put(t, "models", odd, single)
	sameBytes(t, "odd key", readAllAt(t, mustOpen(t, "s3://models/"+odd, opt), 4<<20), single)

	// Re-uploaded under the mount: the Object opened before refuses
	// chunks it has not cached (versitygw answers If-Match with 412).
	opt2, _ := testOpts(t)
	opt2.Retries = -1
	old := mustOpen(t, "s3://models/single/model.safetensors", opt2)
	testsrv.S3Put(t, "models", "single/model.safetensors", genCheckpoint(t, filepath.Join(dir, "new.safetensors"), 31, "w", 1_200_000, 3))
	if _, err := old.ReadAt(make([]byte, 10), 3<<20); !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "s3://models/single/model.safetensors") {
		t.Fatalf("read of a replaced object: %v, want ErrChanged", err)
	}
}

// Credentials and endpoint from the shared config and credentials files
// of a named profile; a wrong secret is refused with an error that names
// the object and not the secret; Options.S3Endpoint overrides the
// environment.
func TestS3SharedFilesAndDenied(t *testing.T) {
	ep := testsrv.S3Server(t)
	dir := testsrv.AWSEnv(t)
	want := genCheckpoint(t, filepath.Join(t.TempDir(), "m.safetensors"), 32, "w", 300_000)
	testsrv.S3Put(t, "files", "m.safetensors", want)
	writeFile(t, filepath.Join(dir, "config"), []byte(fmt.Sprintf("[default]\nregion = eu-west-3\n\n[profile lab]\nregion = us-east-1\nendpoint_url = %s\n", ep)))
	writeFile(t, filepath.Join(dir, "credentials"), []byte(fmt.Sprintf("[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[lab]\naws_access_key_id = %s\naws_secret_access_key = %s\n", testsrv.S3Access, testsrv.S3Secret)))
	t.Setenv("AWS_PROFILE", "lab")
	opt, logs := testOpts(t)
	o := mustOpen(t, "s3://files/m.safetensors", opt)
	sameBytes(t, "read with the shared files", readAllAt(t, o, 1<<20), want)

	t.Setenv("AWS_ACCESS_KEY_ID", testsrv.S3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "WrongSecretValue")
	_, err := Open(ctxT(t), "s3://files/m.safetensors", opt)
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "s3://files/m.safetensors") || !strings.Contains(err.Error(), "403") {
		t.Fatalf("wrong secret: %v, want ErrDenied naming the object and the 403", err)
	}
	if strings.Contains(err.Error(), "WrongSecretValue") || strings.Contains(logs.String(), "WrongSecretValue") {
		t.Fatal("the secret is in the error or the log")
	}

	t.Setenv("AWS_SECRET_ACCESS_KEY", testsrv.S3Secret)
	t.Setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1") // nothing listens there
	opt.S3Endpoint = ep
	o = mustOpen(t, "s3://files/m.safetensors", opt)
	if o.Size() != int64(len(want)) {
		t.Fatal("S3Endpoint did not override AWS_ENDPOINT_URL")
	}
}

// A public bucket reads with no credentials at all (unsigned requests); a
// private one is refused.
func TestS3Anonymous(t *testing.T) {
	ep := testsrv.S3Server(t)
	testsrv.AWSEnv(t)
	want := genCheckpoint(t, filepath.Join(t.TempDir(), "m.safetensors"), 33, "w", 200_000)
	testsrv.S3Put(t, "public-models", "m.safetensors", want)
	testsrv.S3Put(t, "private-models", "m.safetensors", want)
	t.Setenv("AWS_ENDPOINT_URL", ep)
	opt, _ := testOpts(t)
	o := mustOpen(t, "s3://public-models/m.safetensors", opt)
	sameBytes(t, "anonymous read", readAllAt(t, o, 1<<20), want)
	if _, err := Open(ctxT(t), "s3://private-models/m.safetensors", opt); !errors.Is(err, ErrDenied) {
		t.Fatalf("anonymous read of a private bucket: %v, want ErrDenied", err)
	}
}
