package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

// Remote checkpoints: CHECKPOINT given as https://, http://, hf:// or s3://
// is read by safetensors/remote. This file holds the flags that configure
// it and what ls and verify do with a URL.

// remoteMountWait bounds the wait for a remote mount's daemon: opening
// checks every shard's header over the network, and a server that stalls
// is retried (30 s per stalled attempt) before the daemon gives up with
// the reason, which is better than the parent giving up without one.
const remoteMountWait = 5 * time.Minute

type remoteFlags struct {
	cacheDir         string
	cacheSize        string
	s3Endpoint       string
	allowUnversioned bool
}

// addRemoteFlags adds the flags of remote reads; withCache adds the cache
// flags too (ls and verify fetch only headers, which are not cached).
func addRemoteFlags(fl *pflag.FlagSet, rf *remoteFlags, withCache bool) {
	if withCache {
		fl.StringVar(&rf.cacheDir, "cache-dir", "", "remote checkpoints: chunk cache `DIR`ectory (default $XDG_CACHE_HOME/safejaxfs, else ~/.cache/safejaxfs)")
		fl.StringVar(&rf.cacheSize, "cache-size", "10G", "remote checkpoints: chunk cache bound (`SIZE`), bytes or with a K, M, G, T suffix (powers of 1024)")
	}
	fl.StringVar(&rf.s3Endpoint, "s3-endpoint", "", "s3:// checkpoints: an S3-compatible endpoint `URL` (overrides AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)")
	fl.BoolVar(&rf.allowUnversioned, "allow-unversioned", false, "remote checkpoints: accept a server that sends neither ETag nor Last-Modified (a change to a file while it is read would go unnoticed: versions can mix)")
}

// options turns the flags into remote.Options. A relative cache directory
// is made absolute: the daemon works from /.
func (rf *remoteFlags) options(logger *slog.Logger) (remote.Options, error) {
	opt := remote.Options{S3Endpoint: rf.s3Endpoint, Logger: logger, AllowUnversioned: rf.allowUnversioned}
	if rf.cacheSize != "" {
		n, err := parseByteSize(rf.cacheSize)
		if err != nil {
			return opt, fail(exitUsage, "--cache-size: %v", err)
		}
		if n < remote.MinCacheSize {
			return opt, fail(exitUsage, "--cache-size %s is below the minimum of %d MiB", rf.cacheSize, remote.MinCacheSize>>20)
		}
		opt.CacheSize = n
	}
	if rf.cacheDir != "" {
		d, err := filepath.Abs(rf.cacheDir)
		if err != nil {
			return opt, fail(exitUsage, "--cache-dir: %v", err)
		}
		opt.CacheDir = d
	}
	return opt, nil
}

// parseByteSize reads "10G", "512M", "1.5T", "4096", "10GiB": binary
// units, as du -h and rclone's --vfs-cache-max-size read them.
func parseByteSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := 1.0
	if t != "" {
		if i := strings.IndexByte("KMGT", t[len(t)-1]); i >= 0 {
			mult = float64(int64(1) << (10 * (i + 1)))
			t = t[:len(t)-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*mult > 1<<62 {
		return 0, fmt.Errorf("%q is not a size (bytes, or a number with K, M, G or T)", s)
	}
	return int64(f * mult), nil
}

// headerProgress shows the headers of a remote sharded checkpoint
// arriving (a hundred shards take a while): the callback for
// remote.Options.HeaderProgress, and the func that erases the line.
func headerProgress(pf progressFlags) (func(done, total int), func()) {
	var mu sync.Mutex
	var p *progress
	cb := func(done, total int) {
		mu.Lock()
		defer mu.Unlock()
		if p == nil {
			p = newProgress(pf.show(true), "fetching headers", unitCount, int64(total)).items("shards", 0)
		}
		p.set(int64(done), int64(total), "")
	}
	return cb, func() {
		mu.Lock()
		defer mu.Unlock()
		p.finish()
	}
}

// remoteHint is what the user can do about a remote failure, if anything
// the error itself does not say.
func remoteHint(err error) string {
	if errors.Is(err, remote.ErrUnversioned) {
		return "; --allow-unversioned reads it anyway, at the risk of mixing two versions if it changes meanwhile"
	}
	return ""
}

// remoteOpenError explains why url could not be opened. A URL that names
// a directory but lacks the trailing / is fetched as a file: a web
// server redirects it and answers with a listing page, or refuses it
// (403), and what fails then (no byte ranges, a header that is not one,
// access denied) says nothing of the real mistake. So for a URL that
// looks like a directory (no trailing /, no .safetensors or .json) the
// directory is tried too, and if it holds a checkpoint the error says to
// end the URL with /.
func remoteOpenError(url string, err error, opt remote.Options) error {
	if !looksLikeDir(url) || errors.Is(err, remote.ErrUnversioned) || errors.Is(err, context.Canceled) {
		return fail(exitInvalid, "%v%s", err, remoteHint(err))
	}
	dir := url + "/"
	opt.Logger, opt.HeaderProgress = nil, nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o, derr := remote.Open(ctx, dir, opt)
	if derr != nil {
		return fail(exitInvalid, "%v%s", err, remoteHint(err))
	}
	name := o.Name()
	o.Close()
	shown := remote.Redact(url)
	return fail(exitInvalid, "%s is a directory, not a file (fetched as a file, it failed: %v); %s/ holds %s: give the directory's URL with its trailing /, or the file's", shown, err, shown, name)
}

// looksLikeDir reports whether a URL may name a directory given without
// its trailing /: an http(s):// or s3:// URL whose last segment is neither
// a .safetensors file nor a .json index.
func looksLikeDir(url string) bool {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return false
	}
	switch strings.ToLower(scheme) {
	case "http", "https", "s3":
	default:
		return false
	}
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		return false // a query or fragment: not something to append / to
	}
	if strings.HasSuffix(rest, "/") || !strings.Contains(rest, "/") {
		return false
	}
	last := rest[strings.LastIndexByte(rest, '/')+1:]
	return !strings.HasSuffix(last, ".safetensors") && !strings.HasSuffix(last, ".json")
}
