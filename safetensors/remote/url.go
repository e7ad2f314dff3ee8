package remote

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"strings"
)

// location is a parsed remote URL: which kind of store, and where in it.
type location struct {
	kind string // "http" (http and https), "hf" or "s3"

	// http: the URL as given. Its userinfo, if any, becomes Basic auth for
	// the URL's own host only; display forms never show it.
	u *url.URL

	// hf: endpoint (HF_ENDPOINT), repo type prefix in URLs ("" for
	// models, "datasets", "spaces"), ORG/REPO, revision as given ("" means
	// main) and the path inside the repo.
	endpoint *url.URL
	repoType string
	repo     string
	rev      string

	// s3: bucket, and key (hf: the path in the repo).
	bucket string
	key    string
}

const hfDefaultEndpoint = "https://huggingface.co"

// IsURL reports whether s names a remote checkpoint, by a scheme Open
// understands (http, https, hf, s3), rather than a local path.
func IsURL(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	if !ok {
		return false
	}
	switch strings.ToLower(scheme) {
	case "http", "https", "hf", "s3":
		return true
	}
	return false
}

// Redact returns the URL s without userinfo or query string, for messages
// about a URL before (or without) an Object: Object.String is the form to
// use once there is one.
func Redact(s string) string { return redact(s) }

func parseLocation(raw string) (location, error) {
	bad := func(why string) (location, error) {
		return location{}, &Error{Op: "open", URL: redact(raw), Err: fmt.Errorf("%w: %s", ErrBadURL, why)}
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return bad("want https://HOST/PATH, hf://ORG/REPO[@REV][/PATH] or s3://BUCKET/KEY")
	}
	switch strings.ToLower(scheme) {
	case "http", "https":
		u, err := url.Parse(raw)
		if err != nil {
			return bad(err.Error())
		}
		if u.Host == "" {
			return bad("no host")
		}
		u.Fragment, u.RawFragment = "", ""
		return location{kind: "http", u: u}, nil
	case "hf":
		ep := strings.TrimRight(os.Getenv("HF_ENDPOINT"), "/")
		if ep == "" {
			ep = hfDefaultEndpoint
		}
		epu, err := url.Parse(ep)
		if err != nil || epu.Host == "" || (epu.Scheme != "http" && epu.Scheme != "https") {
			return bad(fmt.Sprintf("HF_ENDPOINT %q is not an http(s) URL", ep))
		}
		l := location{kind: "hf", endpoint: epu}
		for _, t := range []string{"datasets/", "spaces/"} {
			if strings.HasPrefix(rest, t) {
				l.repoType, rest = strings.TrimSuffix(t, "/"), rest[len(t):]
			}
		}
		org, rest, _ := strings.Cut(rest, "/")
		name, p, _ := strings.Cut(rest, "/")
		name, rev, hasRev := strings.Cut(name, "@")
		if org == "" || name == "" {
			return bad("want hf://ORG/REPO[@REVISION][/PATH]")
		}
		if hasRev {
			// A revision with a slash (refs/pr/1) is written escaped:
			// @refs%2Fpr%2F1, as huggingface_hub's HfFileSystem does.
			if rev, err = url.PathUnescape(rev); err != nil || rev == "" {
				return bad("bad revision after @")
			}
		}
		if !validRelPath(p, true) {
			return bad("path " + p + " has an empty, . or .. segment")
		}
		l.repo, l.rev, l.key = org+"/"+name, rev, p
		return l, nil
	case "s3":
		bucket, key, _ := strings.Cut(rest, "/")
		if bucket == "" {
			return bad("want s3://BUCKET/KEY")
		}
		return location{kind: "s3", bucket: bucket, key: key}, nil
	}
	return bad("scheme " + scheme + " (want https, http, hf or s3)")
}

// isDir says the URL names a directory (a repo root, a prefix ending in /):
// Open looks for the checkpoint files transformers looks for there.
func (l location) isDir() bool {
	switch l.kind {
	case "http":
		return strings.HasSuffix(l.u.Path, "/")
	default:
		return l.key == "" || strings.HasSuffix(l.key, "/")
	}
}

// name is the last path segment.
func (l location) name() string {
	if l.kind == "http" {
		return path.Base(l.u.Path)
	}
	return path.Base(l.key)
}

// sibling is the file name (a relative path) next to l, or in l when l is a
// directory. name must not leave that directory.
func (l location) sibling(name string) (location, error) {
	if !validRelPath(name, false) || name == "" {
		return location{}, &Error{Op: "sibling", URL: l.display(""), Err: fmt.Errorf("%w: %q is not a relative path inside the checkpoint's directory", ErrBadURL, name)}
	}
	dir := func(p string) string {
		if strings.HasSuffix(p, "/") || p == "" {
			return p
		}
		if i := strings.LastIndexByte(p, '/'); i >= 0 {
			return p[:i+1]
		}
		return ""
	}
	n := l
	switch l.kind {
	case "http":
		u := *l.u
		// The query of the first URL (often a signature for that one file)
		// means nothing for another file.
		u.RawQuery, u.ForceQuery = "", false
		u.Path = dir(l.u.Path) + name
		u.RawPath = ""
		n.u = &u
	default:
		n.key = dir(l.key) + name
	}
	return n, nil
}

// validRelPath: no absolute path, no empty, . or .. segment, no NUL or
// backslash, so a name from an index cannot reach outside its directory.
// A trailing slash is allowed only when dirOK.
func validRelPath(p string, dirOK bool) bool {
	if p == "" {
		return true
	}
	if strings.ContainsAny(p, "\x00\\") || strings.HasPrefix(p, "/") {
		return false
	}
	if dirOK {
		p = strings.TrimSuffix(p, "/")
	}
	for _, s := range strings.Split(p, "/") {
		if s == "" || s == "." || s == ".." {
			return false
		}
	}
	return true
}

// display is the URL without credentials, for errors, logs and
// /proc/mounts. rev, when not "", replaces an hf revision.
func (l location) display(rev string) string {
	switch l.kind {
	case "http":
		return redactURL(l.u)
	case "hf":
		s := "hf://"
		if l.repoType != "" {
			s += l.repoType + "/"
		}
		s += l.repo
		if rev == "" {
			rev = l.rev
		}
		if rev != "" {
			s += "@" + url.PathEscape(rev)
		}
		if l.key != "" {
			s += "/" + l.key
		}
		return s
	default:
		return "s3://" + l.bucket + "/" + l.key
	}
}

// redactURL drops userinfo and replaces a query (presigned URLs carry
// their signature there) with "?…".
func redactURL(u *url.URL) string {
	v := *u
	v.User = nil
	q := v.RawQuery != ""
	v.RawQuery, v.ForceQuery, v.Fragment, v.RawFragment = "", false, "", ""
	s := v.String()
	if q {
		s += "?…"
	}
	return s
}

// redact is redactURL for a string that may not parse.
func redact(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
		return redactURL(u)
	}
	if i := strings.IndexAny(raw, "@?"); i >= 0 {
		return raw[:i] + "…"
	}
	return raw
}
