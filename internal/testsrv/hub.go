package testsrv

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An hf:// layout on nginx, as the Hub's resolve endpoint answers:
// /ORG/REPO/resolve/REV/PATH with X-Repo-Commit; small files served
// directly, large ones (LFS) as a 302 with X-Linked-Size and X-Linked-Etag
// to a second server standing in for the CDN, which refuses (403) any
// request that carries an Authorization header.
type HubEntry struct {
	Repo, Rev, Path string // URL parts
	Commit          string // X-Repo-Commit
	File            string // what it serves
	Big             bool   // 302 to the CDN
	// Tree: File is the JSON the Hub's tree API answers for the repo at
	// Rev (/api/models/REPO/tree/REV), instead of a file; Path unused.
	Tree bool
}

// StartHub serves entries as the Hub would at HF_ENDPOINT, which it sets
// for the test; token, when not "", is required as a Bearer token.
func StartHub(t testing.TB, token string, entries ...HubEntry) (ng *Nginx, endpoint string, ports []int) {
	t.Helper()
	blobs := t.TempDir()
	var origin, cdn strings.Builder
	origin.WriteString("    root " + blobs + "/none;\n")
	if token != "" {
		fmt.Fprintf(&origin, "    if ($http_authorization != 'Bearer %s') { return 401; }\n", token)
	}
	for _, e := range entries {
		if e.Tree {
			fmt.Fprintf(&origin, "    location = /api/models/%s/tree/%s {\n      default_type application/json;\n      alias %s;\n    }\n", e.Repo, e.Rev, e.File)
			continue
		}
		fmt.Fprintf(&origin, "    location = /%s/resolve/%s/%s {\n      add_header X-Repo-Commit %s always;\n", e.Repo, e.Rev, e.Path, e.Commit)
		if e.Big {
			b, err := os.ReadFile(e.File)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			h := hex.EncodeToString(sum[:])
			os.Symlink(e.File, filepath.Join(blobs, h))
			fmt.Fprintf(&origin, "      add_header X-Linked-Size %d always;\n      add_header X-Linked-Etag '\"%s\"' always;\n      return 302 http://127.0.0.1:{port1}/blobs/%s;\n    }\n", len(b), h, h)
		} else {
			fmt.Fprintf(&origin, "      alias %s;\n    }\n", e.File)
		}
	}
	fmt.Fprintf(&cdn, "    location /blobs/ {\n      if ($http_authorization) { return 403; }\n      alias %s/;\n    }\n", blobs)
	ng, ports = StartNginx(t, origin.String(), cdn.String())
	endpoint = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	t.Setenv("HF_ENDPOINT", endpoint)
	return ng, endpoint, ports
}

// NoHFEnv clears the variables that would find a real token.
func NoHFEnv(t testing.TB) {
	for _, v := range []string{"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"} {
		t.Setenv(v, "")
	}
	t.Setenv("HF_HOME", t.TempDir())
}
