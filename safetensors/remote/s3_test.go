package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// versitygw (v1.8.0, built by scripts/test.sh) is the S3 server: real
// SigV4 checks, ranges, ETags, If-Match, bucket policies. It takes seconds
// to start, so one instance serves the package's tests; TestMain stops it.
const (
	s3Access = "AKTESTACCESS"
	s3Secret = "TestSecretKey/With+Chars"
)

var vgw struct {
	once     sync.Once
	endpoint string
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{}
	err      error
	missing  bool
}

func TestMain(m *testing.M) {
	code := m.Run()
	if vgw.cmd != nil {
		vgw.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-vgw.exited:
		case <-time.After(5 * time.Second):
			vgw.cmd.Process.Kill()
			<-vgw.exited
		}
	}
	if vgw.dir != "" {
		os.RemoveAll(vgw.dir)
	}
	os.Exit(code)
}

func versitygwBinary() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	for _, gp := range filepath.SplitList(build.Default.GOPATH) {
		if p := filepath.Join(gp, "bin", "versitygw"); fileExists(p) {
			return p
		}
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		if p := filepath.Join(strings.TrimSpace(string(out)), "bin", "versitygw"); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// s3Server returns the endpoint of the shared versitygw, starting it on
// first use. Missing binary: a failure under CI, a skip elsewhere.
func s3Server(t *testing.T) string {
	t.Helper()
	vgw.once.Do(startVersitygw)
	if vgw.missing {
		if os.Getenv("CI") != "" {
			t.Fatal("versitygw is not installed: scripts/test.sh builds it (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
		}
		t.Skip("versitygw is not installed (scripts/test.sh builds it)")
	}
	if vgw.err != nil {
		t.Fatal(vgw.err)
	}
	return vgw.endpoint
}

func startVersitygw() {
	bin := versitygwBinary()
	if bin == "" {
		vgw.missing = true
		return
	}
	dir, err := os.MkdirTemp("", "versitygw-")
	if err != nil {
		vgw.err = err
		return
	}
	vgw.dir = dir
	os.MkdirAll(filepath.Join(dir, "data"), 0o755)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		vgw.err = err
		return
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--access", s3Access, "--secret", s3Secret, "--port", addr, "posix", filepath.Join(dir, "data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		vgw.err = err
		return
	}
	vgw.cmd, vgw.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(vgw.exited) }()
	vgw.endpoint = "http://" + addr
	// It listens only once ready (about 4.5 s here); a response of any
	// status means it is up.
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(vgw.endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-vgw.exited:
			vgw.err = fmt.Errorf("versitygw exited: %s", out.String())
			return
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			vgw.err = fmt.Errorf("versitygw did not answer within 60 s: %s", out.String())
			return
		}
	}
}

// s3Put uploads through S3 (objects copied into versitygw's directory have
// no ETag) and returns the object's ETag.
func s3Put(t *testing.T, bucket, key string, data []byte) string {
	t.Helper()
	ep := s3Server(t)
	c, err := minio.New(strings.TrimPrefix(ep, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(s3Access, s3Secret, ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if ok, err := c.BucketExists(ctx, bucket); err != nil {
		t.Fatal(err)
	} else if !ok {
		if err := c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(bucket, "public") {
			pol := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":["s3:GetObject"],"Resource":["arn:aws:s3:::%s/*"]}]}`, bucket)
			if err := c.SetBucketPolicy(ctx, bucket, pol); err != nil {
				t.Fatal(err)
			}
		}
	}
	info, err := c.PutObject(ctx, bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{DisableMultipart: true})
	if err != nil {
		t.Fatal(err)
	}
	return `"` + strings.Trim(info.ETag, `"`) + `"`
}

// awsEnv isolates a test from the machine's AWS configuration: no
// credentials, files or endpoint unless the test sets them.
func awsEnv(t *testing.T) string {
	dir := t.TempDir()
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_SESSION_TOKEN",
		"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	return dir
}

// s3://BUCKET/KEY with env credentials and AWS_ENDPOINT_URL: a single file
// and a prefix holding a sharded checkpoint, every byte compared, through
// a counting proxy (the If-Match on every GET, a repeat read with no
// request).
func TestS3EnvCredentials(t *testing.T) {
	ep := s3Server(t)
	awsEnv(t)
	dir := t.TempDir()
	single := genCheckpoint(t, filepath.Join(dir, "single.safetensors"), 30, "w", 1_200_000, 3)
	etag := s3Put(t, "models", "single/model.safetensors", single)
	shards, idx := genSharded(t, filepath.Join(dir, "sharded"), 2, 100_000, 2)
	s3Put(t, "models", "sharded/model.safetensors.index.json", idx)
	for name, b := range shards {
		s3Put(t, "models", "sharded/"+name, b)
	}
	var mu sync.Mutex
	var seen []*http.Request
	p := startFaultProxy(t, ep, func(_ int, r *http.Request) fault {
		mu.Lock()
		seen = append(seen, r)
		mu.Unlock()
		return pass
	})
	t.Setenv("AWS_ACCESS_KEY_ID", s3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3Secret)
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
		if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential="+s3Access+"/") || r.URL.Path != "/models/single/model.safetensors" {
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
	if strings.Contains(logs.String(), s3Secret) {
		t.Fatal("the secret is in the log")
	}

	// Keys with characters S3 and Go escape differently still sign right.
	odd := "odd keys/a+b=c!(1).safetensors"
	s3Put(t, "models", odd, single)
	sameBytes(t, "odd key", readAllAt(t, mustOpen(t, "s3://models/"+odd, opt), 4<<20), single)

	// Re-uploaded under the mount: the Object opened before refuses
	// chunks it has not cached (versitygw answers If-Match with 412).
	opt2, _ := testOpts(t)
	opt2.Retries = -1
	old := mustOpen(t, "s3://models/single/model.safetensors", opt2)
	s3Put(t, "models", "single/model.safetensors", genCheckpoint(t, filepath.Join(dir, "new.safetensors"), 31, "w", 1_200_000, 3))
	if _, err := old.ReadAt(make([]byte, 10), 3<<20); !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "s3://models/single/model.safetensors") {
		t.Fatalf("read of a replaced object: %v, want ErrChanged", err)
	}
}

// Credentials and endpoint from the shared config and credentials files
// of a named profile; a wrong secret is refused with an error that names
// the object and not the secret; Options.S3Endpoint overrides the
// environment.
func TestS3SharedFilesAndDenied(t *testing.T) {
	ep := s3Server(t)
	dir := awsEnv(t)
	want := genCheckpoint(t, filepath.Join(t.TempDir(), "m.safetensors"), 32, "w", 300_000)
	s3Put(t, "files", "m.safetensors", want)
	writeFile(t, filepath.Join(dir, "config"), []byte(fmt.Sprintf("[default]\nregion = eu-west-3\n\n[profile lab]\nregion = us-east-1\nendpoint_url = %s\n", ep)))
	writeFile(t, filepath.Join(dir, "credentials"), []byte(fmt.Sprintf("[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[lab]\naws_access_key_id = %s\naws_secret_access_key = %s\n", s3Access, s3Secret)))
	t.Setenv("AWS_PROFILE", "lab")
	opt, logs := testOpts(t)
	o := mustOpen(t, "s3://files/m.safetensors", opt)
	sameBytes(t, "read with the shared files", readAllAt(t, o, 1<<20), want)

	t.Setenv("AWS_ACCESS_KEY_ID", s3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "WrongSecretValue")
	_, err := Open(ctxT(t), "s3://files/m.safetensors", opt)
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "s3://files/m.safetensors") || !strings.Contains(err.Error(), "403") {
		t.Fatalf("wrong secret: %v, want ErrDenied naming the object and the 403", err)
	}
	if strings.Contains(err.Error(), "WrongSecretValue") || strings.Contains(logs.String(), "WrongSecretValue") {
		t.Fatal("the secret is in the error or the log")
	}

	t.Setenv("AWS_SECRET_ACCESS_KEY", s3Secret)
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
	ep := s3Server(t)
	awsEnv(t)
	want := genCheckpoint(t, filepath.Join(t.TempDir(), "m.safetensors"), 33, "w", 200_000)
	s3Put(t, "public-models", "m.safetensors", want)
	s3Put(t, "private-models", "m.safetensors", want)
	t.Setenv("AWS_ENDPOINT_URL", ep)
	opt, _ := testOpts(t)
	o := mustOpen(t, "s3://public-models/m.safetensors", opt)
	sameBytes(t, "anonymous read", readAllAt(t, o, 1<<20), want)
	if _, err := Open(ctxT(t), "s3://private-models/m.safetensors", opt); !errors.Is(err, ErrDenied) {
		t.Fatalf("anonymous read of a private bucket: %v, want ErrDenied", err)
	}
}
