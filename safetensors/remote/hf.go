package remote

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// hfToken finds the Hub token the way huggingface_hub does: HF_TOKEN, then
// the legacy HUGGING_FACE_HUB_TOKEN, then the file `hf auth login` writes
// (HF_TOKEN_PATH, else $HF_HOME/token, HF_HOME defaulting to
// $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface). "" means anonymous.
func hfToken() string {
	for _, v := range []string{"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} {
		if t := strings.TrimSpace(os.Getenv(v)); t != "" {
			return t
		}
	}
	p := os.Getenv("HF_TOKEN_PATH")
	if p == "" {
		home := os.Getenv("HF_HOME")
		if home == "" {
			cache := os.Getenv("XDG_CACHE_HOME")
			if cache == "" {
				h, err := os.UserHomeDir()
				if err != nil {
					return ""
				}
				cache = filepath.Join(h, ".cache")
			}
			home = filepath.Join(cache, "huggingface")
		}
		p = filepath.Join(home, "token")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// hfResolveURL is ENDPOINT/[TYPE/]ORG/REPO/resolve/REV/PATH, the URL
// huggingface_hub downloads a file from. The revision is escaped whole
// (refs/pr/1 -> refs%2Fpr%2F1), as huggingface_hub does.
func hfResolveURL(l location, rev string) *url.URL {
	u := *l.endpoint
	base := strings.TrimRight(u.Path, "/")
	prefix := "/"
	if l.repoType != "" {
		prefix += l.repoType + "/"
	}
	u.Path = base + prefix + l.repo + "/resolve/" + rev + "/" + l.key
	u.RawPath = base + prefix + l.repo + "/resolve/" + url.PathEscape(rev) + "/" + escapePath(l.key)
	return &u
}

// escapePath escapes each segment of a slash-separated path.
func escapePath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}
