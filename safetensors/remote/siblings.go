package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
)

// Siblings are the files a loader wants next to a checkpoint
// (config.json, the tokenizer's files, ...). A mount lists them beside the
// checkpoint's own files and fetches their bytes only when read.
//
// How they are found depends on the store. The Hub has a listing API (the
// one huggingface_hub's list_repo_tree and hf-mount use): one request at
// the commit the mount is pinned to gives every name and size. A plain
// https:// directory or an S3 prefix has no listing this package can rely
// on, so only names without wildcards are tried, one probe each (which
// also gives the size and the first bytes); the Hub falls back to that
// when its API does not answer.

// SiblingFile is a file in the directory of a remote checkpoint.
type SiblingFile struct {
	Name string
	Size int64
	obj  *Object // opened already (found by probing); else opened at first use
}

// maxListPages bounds the pages of a Hub listing followed (1000 entries
// each): a repo root with more files than that is not a model directory.
const maxListPages = 20

// IsDirURL reports whether rawURL names a directory (a repo root, a path
// or prefix ending in /) rather than a file.
func IsDirURL(rawURL string) bool {
	l, err := parseLocation(rawURL)
	return err == nil && l.isDir()
}

// Siblings lists the files in o's directory whose names match one of
// patterns (path.Match, on the name), except exclude (the checkpoint's own
// files). The result is sorted by name. A listing that fails is reported
// with what could be found without it.
func (o *Object) Siblings(ctx context.Context, patterns, exclude []string) ([]SiblingFile, error) {
	if o.closed.Load() {
		return nil, &Error{Op: "list", URL: o.display, Err: ErrClosed}
	}
	var out []SiblingFile
	var listErr error
	if o.loc.kind == "hf" {
		names, err := o.hubList(ctx)
		if err == nil {
			for _, f := range names {
				if matchAny(patterns, f.Name) && !slices.Contains(exclude, f.Name) {
					out = append(out, f)
				}
			}
			slices.SortFunc(out, func(a, b SiblingFile) int { return strings.Compare(a.Name, b.Name) })
			return out, nil
		}
		listErr = err
	}
	out = o.probeSiblings(ctx, patterns, exclude)
	return out, listErr
}

// wellKnown are the files tokenizers save under names a pattern such as
// *.model or *.txt stands for: where there is no listing, these are tried.
var wellKnown = []string{"tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "merges.txt", "vocab.txt"}

// probeSiblings opens every literal name among patterns (no wildcard),
// and the well-known names the patterns match, concurrently; a name the
// server does not have is skipped.
func (o *Object) probeSiblings(ctx context.Context, patterns, exclude []string) []SiblingFile {
	var names []string
	for _, p := range append(slices.Clone(patterns), wellKnown...) {
		literal := !strings.ContainsAny(p, `*?[\`) && p != ""
		if literal && matchAny(patterns, p) && !slices.Contains(exclude, p) && !slices.Contains(names, p) {
			names = append(names, p)
		}
	}
	found := make([]*Object, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Go(func() {
			s, err := o.Sibling(ctx, n)
			if err != nil {
				if !errors.Is(err, ErrNotFound) {
					o.c.opt.Logger.Warn("a file beside the checkpoint was skipped", "file", n, "err", err)
				}
				return
			}
			found[i] = s
		})
	}
	wg.Wait()
	var out []SiblingFile
	for i, s := range found {
		if s != nil {
			out = append(out, SiblingFile{Name: names[i], Size: s.Size(), obj: s})
		}
	}
	slices.SortFunc(out, func(a, b SiblingFile) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// OpenSibling returns the object of a file Siblings listed, for the
// caller to keep and close: the one its probe opened (handed over once),
// else a new one (for hf://, at the commit o is pinned to), whose size
// must be the one listed.
func (o *Object) OpenSibling(ctx context.Context, f *SiblingFile) (*Object, error) {
	if s := f.obj; s != nil {
		f.obj = nil
		return s, nil
	}
	s, err := o.Sibling(ctx, f.Name)
	if err != nil {
		return nil, err
	}
	if s.Size() != f.Size {
		s.Close()
		return nil, &Error{Op: "open", URL: s.display, Err: fmt.Errorf("%w: %d bytes, the listing said %d", ErrChanged, s.Size(), f.Size)}
	}
	return s, nil
}

// Close releases what the listing opened.
func (f *SiblingFile) Close() {
	if f.obj != nil {
		f.obj.Close()
		f.obj = nil
	}
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, err := path.Match(p, name); err == nil && ok {
			return true
		}
	}
	return false
}

// hubEntry is one item of the Hub's tree listing.
type hubEntry struct {
	Type string `json:"type"`
	Path string `json:"path"`
	Size int64  `json:"size"`
	LFS  *struct {
		Size int64 `json:"size"`
	} `json:"lfs"`
}

// hubList lists o's directory in its repo at the pinned commit:
// GET ENDPOINT/api/{models,datasets,spaces}/ORG/REPO/tree/REV[/DIR],
// following the Link: <...>; rel="next" pages.
func (o *Object) hubList(ctx context.Context) ([]SiblingFile, error) {
	l := o.loc
	kind := "models"
	if l.repoType != "" {
		kind = l.repoType
	}
	dir := path.Dir(l.key)
	if dir == "." {
		dir = ""
	}
	u := *l.endpoint
	base := strings.TrimRight(u.Path, "/")
	u.Path = base + "/api/" + kind + "/" + l.repo + "/tree/" + o.version
	u.RawPath = base + "/api/" + kind + "/" + l.repo + "/tree/" + url.PathEscape(o.version)
	if dir != "" {
		u.Path += "/" + dir
		u.RawPath += "/" + escapePath(dir)
	}
	next := &u
	var out []SiblingFile
	for page := 0; next != nil; page++ {
		if page == maxListPages {
			return nil, &Error{Op: "list", URL: o.display, Err: fmt.Errorf("%w: more than %d pages of files", ErrBadResponse, maxListPages)}
		}
		var items []hubEntry
		var err error
		items, next, err = o.hubListPage(ctx, next)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			if it.Type != "file" {
				continue
			}
			name := it.Path
			if dir != "" {
				var ok bool
				if name, ok = strings.CutPrefix(name, dir+"/"); !ok {
					continue
				}
			}
			if strings.Contains(name, "/") || !validRelPath(name, false) {
				continue
			}
			size := it.Size
			if it.LFS != nil && it.LFS.Size > 0 {
				size = it.LFS.Size
			}
			if size < 0 {
				continue
			}
			out = append(out, SiblingFile{Name: name, Size: size})
		}
	}
	return out, nil
}

// hubListPage fetches one page of a listing, with the object's retries;
// next is the following page, nil after the last.
func (o *Object) hubListPage(ctx context.Context, u *url.URL) (items []hubEntry, next *url.URL, err error) {
	shown := u.Scheme + "://" + u.Host + u.Path
	err = o.withRetries(ctx, "list", func() string { return "" }, func() attempt {
		if err := acquire(ctx, o.c.sem); err != nil {
			return fail(0, err)
		}
		defer func() { <-o.c.sem }()
		ctx, guard, cancel := newStallGuard(ctx, o.c.opt.StallTimeout)
		defer cancel(nil)
		defer guard.stop()
		req, err := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
		if err != nil {
			return fail(0, err)
		}
		req.URL = u
		req.Header.Set("User-Agent", "safejaxfs")
		if o.c.hfToken != "" && sameOrigin(u, o.loc.endpoint) {
			req.Header.Set("Authorization", "Bearer "+o.c.hfToken)
		}
		resp, err := o.c.http.Do(req)
		if err != nil {
			return netErr(ctx, err)
		}
		defer drain(resp)
		if a := classify(resp); a.err != nil {
			return a
		}
		if resp.StatusCode != http.StatusOK {
			return fail(resp.StatusCode, fmt.Errorf("%w: status %d for %s", ErrBadResponse, resp.StatusCode, shown))
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, MaxReadAllSize+1))
		if err != nil {
			return transient(resp.StatusCode, fmt.Errorf("reading the listing %s: %w", shown, err))
		}
		if len(b) > MaxReadAllSize {
			return fail(resp.StatusCode, fmt.Errorf("%w: the listing %s is above %d bytes", ErrBadResponse, shown, MaxReadAllSize))
		}
		items = nil
		if err := json.Unmarshal(b, &items); err != nil {
			return fail(resp.StatusCode, fmt.Errorf("%w: the listing %s is not a JSON array of files: %v", ErrBadResponse, shown, err))
		}
		next = nextLink(u, resp.Header.Values("Link"))
		return attempt{}
	})
	return items, next, err
}

// nextLink finds rel="next" in Link headers; only a page on the same host
// is followed (it gets the token).
func nextLink(base *url.URL, links []string) *url.URL {
	for _, h := range links {
		for _, part := range strings.Split(h, ",") {
			target, params, ok := strings.Cut(part, ";")
			if !ok || !strings.Contains(strings.ReplaceAll(params, " ", ""), `rel="next"`) {
				continue
			}
			target = strings.Trim(strings.TrimSpace(target), "<>")
			n, err := base.Parse(target)
			if err != nil || !sameOrigin(n, base) {
				return nil
			}
			return n
		}
	}
	return nil
}
