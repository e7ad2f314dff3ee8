package testsrv

import (
	"bytes"
	"context"
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

	"github.com/safejaxfs/safejaxfs/internal/listener"
)

// versitygw (v1.8.0, built by scripts/test.sh into its own cache
// directory) is the S3 server: real
// SigV4 checks, ranges, ETags, If-Match, bucket policies. It takes seconds
// to start, so one instance serves a test binary; its TestMain calls StopS3.
const (
	S3Access = "AKTESTACCESS"
	S3Secret = "TestSecretKey/With+Chars"
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

// StopS3 stops the shared versitygw, if a test started it: call it from
// TestMain after m.Run.
func StopS3() {
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
}

// versitygwBinary finds the server: $SAFEJAXFS_VERSITYGW, then PATH, then
// where scripts/test.sh builds it ($XDG_CACHE_HOME/safejaxfs-test/bin, by
// default ~/.cache/...), then $GOPATH/bin, where it used to build it.
func versitygwBinary() string {
	if p := os.Getenv("SAFEJAXFS_VERSITYGW"); p != "" {
		return p // a wrong path fails at the start, saying which
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	if d, err := os.UserCacheDir(); err == nil {
		if p := filepath.Join(d, "safejaxfs-test", "bin", "versitygw"); fileExists(p) {
			return p
		}
	}
	for _, gp := range filepath.SplitList(build.Default.GOPATH) {
		if p := filepath.Join(gp, "bin", "versitygw"); fileExists(p) {
			return p
		}
	}
	return ""
}

// FindS3Server looks for versitygw now and has later lookups use what it
// found: for a TestMain about to point XDG_CACHE_HOME elsewhere.
func FindS3Server() {
	if os.Getenv("SAFEJAXFS_VERSITYGW") == "" {
		if p := versitygwBinary(); p != "" {
			os.Setenv("SAFEJAXFS_VERSITYGW", p)
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// S3Server returns the endpoint of the shared versitygw, starting it on
// first use. Missing binary: a failure under CI, a skip elsewhere.
func S3Server(t testing.TB) string {
	t.Helper()
	vgw.once.Do(startVersitygw)
	if vgw.missing {
		if os.Getenv("CI") != "" {
			t.Fatal("versitygw is not installed: scripts/test.sh builds it (GOBIN=~/.cache/safejaxfs-test/bin go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
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
	// A port picked free can be taken before versitygw binds it (internal/listener):
	// it then exits, and another try picks another port.
	for try := 0; try < 3; try++ {
		if vgw.err = tryVersitygw(bin, dir); vgw.err == nil {
			return
		}
	}
}

// tryVersitygw starts versitygw on a port picked free and waits until it
// listens there and answers.
func tryVersitygw(bin, dir string) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "--access", S3Access, "--secret", S3Secret, "--port", addr, "posix", filepath.Join(dir, "data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	vgw.cmd, vgw.exited = cmd, exited
	vgw.endpoint = "http://" + addr
	// It listens only once ready (about 4.5 s here); a response of any
	// status from the socket it holds means it is up.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if listener.HeldBy(cmd.Process.Pid, port) {
			if resp, err := http.Get(vgw.endpoint + "/"); err == nil {
				resp.Body.Close()
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("versitygw exited: %s", out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			return fmt.Errorf("versitygw did not answer within 60 s: %s", out.String())
		}
	}
}

// S3Put uploads through S3 (objects copied into versitygw's directory have
// no ETag) and returns the object's ETag.
func S3Put(t testing.TB, bucket, key string, data []byte) string {
	t.Helper()
	ep := S3Server(t)
	c, err := minio.New(strings.TrimPrefix(ep, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(S3Access, S3Secret, ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath,
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

// AWSEnv isolates a test from the machine's AWS configuration: no
// credentials, files or endpoint unless the test sets them.
func AWSEnv(t testing.TB) string {
	dir := t.TempDir()
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_SESSION_TOKEN",
		"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	return dir
}
