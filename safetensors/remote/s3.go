package remote

// S3 requests are built and signed here with minio-go's SigV4 signer and
// credential providers, and sent by the same HTTP code as every other
// remote read (ranges, If-Match, retries, cache), rather than through
// minio-go's Client. Measured on the safejaxfs binary (which links net/http
// for the remote layer anyway, 11.2 MB): minio-go's signer + credentials add
// 0.7 MB, minio-go's Client 1.9 MB, aws-sdk-go-v2's s3 2.8 MB and with its
// config module (shared config/SSO/IMDS) 5.5 MB. minio-go's credential file
// provider already merges ~/.aws/config and ~/.aws/credentials (profiles,
// SSO, credential_process), which is the configuration users have. Its
// Client would add a bucket-location request before the first GET and its
// own retry policy (no Retry-After); one request path for all stores keeps
// the fault behaviour identical and tested once.

import (
	"bufio"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"github.com/minio/minio-go/v7/pkg/signer"
)

const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// s3conf is the resolved AWS configuration for one Open.
type s3conf struct {
	endpoint  *url.URL // nil: AWS itself
	creds     *credentials.Credentials
	anonymous bool // no credentials were found when it was set up

	mu     sync.Mutex
	region string // may be corrected by the bucket's X-Amz-Bucket-Region
}

// newS3Conf reads the usual AWS configuration: endpoint from the option,
// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the profile's endpoint_url;
// region from AWS_REGION, AWS_DEFAULT_REGION or the profile's region
// (us-east-1 when none); credentials from the environment, then the shared
// config and credentials files (AWS_PROFILE). No credentials anywhere means
// anonymous, unsigned requests, which public buckets accept.
func newS3Conf(opt Options) (*s3conf, error) {
	prof := awsProfile()
	ep := opt.S3Endpoint
	for _, v := range []string{os.Getenv("AWS_ENDPOINT_URL_S3"), os.Getenv("AWS_ENDPOINT_URL"), prof["endpoint_url"]} {
		if ep == "" {
			ep = v
		}
	}
	c := &s3conf{region: "us-east-1"}
	for _, v := range []string{prof["region"], os.Getenv("AWS_DEFAULT_REGION"), os.Getenv("AWS_REGION")} {
		if v != "" {
			c.region = v
		}
	}
	if ep != "" {
		if !strings.Contains(ep, "://") {
			ep = "https://" + ep
		}
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			return nil, &Error{Op: "open", URL: redact(ep), Err: badURLf("S3 endpoint is not a URL")}
		}
		u.Path = strings.TrimRight(u.Path, "/")
		c.endpoint = u
	}
	c.creds = credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
	})
	// Resolved once: an anonymous chain counts as expired and would read
	// the config files again before every request.
	v, err := c.creds.GetWithContext(nil)
	if err != nil {
		return nil, &Error{Op: "open", URL: "s3://", Err: fmt.Errorf("reading AWS credentials: %w", err)}
	}
	c.anonymous = v.AccessKeyID == "" || v.SecretAccessKey == ""
	return c, nil
}

// objectURL addresses bucket/key: path style on a custom endpoint (what
// S3-compatible stores serve), virtual-hosted on AWS unless the bucket name
// has dots (which break the TLS wildcard certificate).
func (c *s3conf) objectURL(bucket, key string) *url.URL {
	c.mu.Lock()
	region := c.region
	c.mu.Unlock()
	var u url.URL
	p := "/" + key
	switch {
	case c.endpoint != nil:
		u = *c.endpoint
		p = u.Path + "/" + bucket + p
	case strings.Contains(bucket, "."):
		u = url.URL{Scheme: "https", Host: "s3." + region + ".amazonaws.com"}
		p = "/" + bucket + p
	default:
		u = url.URL{Scheme: "https", Host: bucket + ".s3." + region + ".amazonaws.com"}
	}
	u.Path = p
	// The signature covers the path as S3 encodes it; Go's own escaping
	// differs for some characters (+, =, !, ...).
	u.RawPath = s3utils.EncodePath(p)
	return &u
}

// sign adds SigV4 headers, or nothing for anonymous access.
func (c *s3conf) sign(req *http.Request) (*http.Request, error) {
	if c.anonymous {
		return req, nil
	}
	v, err := c.creds.GetWithContext(nil)
	if err != nil {
		return nil, err
	}
	if v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return req, nil
	}
	c.mu.Lock()
	region := c.region
	c.mu.Unlock()
	req.Header.Set("X-Amz-Content-Sha256", emptySHA256)
	return signer.SignV4(*req, v.AccessKeyID, v.SecretAccessKey, v.SessionToken, region), nil
}

// fixRegion adopts the region a response says the bucket lives in (AWS
// answers 301 or 400 to a request signed for the wrong one) and reports
// whether it changed, so the request is worth repeating.
func (c *s3conf) fixRegion(resp *http.Response) bool {
	r := resp.Header.Get("X-Amz-Bucket-Region")
	if r == "" || (resp.StatusCode != 301 && resp.StatusCode != 400 && resp.StatusCode != 403) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r == c.region {
		return false
	}
	c.region = r
	return true
}

// awsProfile reads the current profile's keys from the shared config file
// (AWS_CONFIG_FILE, else ~/.aws/config): only region and endpoint_url are
// used here; minio-go reads the credentials.
func awsProfile() map[string]string {
	name := os.Getenv("AWS_PROFILE")
	if name == "" {
		name = "default"
	}
	p := os.Getenv("AWS_CONFIG_FILE")
	if p == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return nil
		}
		p = filepath.Join(h, ".aws", "config")
	}
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	out := map[string]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			sec := strings.TrimSpace(strings.Trim(line, "[]"))
			in = sec == "profile "+name || (name == "default" && sec == "default")
		case in:
			if k, v, ok := strings.Cut(line, "="); ok {
				out[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
	}
	return out
}
