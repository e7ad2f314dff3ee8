package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/safejaxfs/safejaxfs/fs"
	"github.com/safejaxfs/safejaxfs/safetensors"
	"github.com/safejaxfs/safejaxfs/safetensors/checkpoint"
	"github.com/safejaxfs/safejaxfs/safetensors/remote"
)

type mountFlags struct {
	readOnly   bool
	sep        string
	npy        bool
	allowOther bool
	allowRoot  bool
	nonempty   bool
	fsname     string
	perm       permFlags
	options    []string
	debug      bool
	foreground bool
	logFile    string
	remote     remoteFlags
	files      filesFlags
	// Set by the mount helper (mounthelper.go): mount -s skips unknown
	// options; mount -f checks everything and mounts nothing.
	sloppy, fake bool
	progress     progressFlags
	// kernel are the -o options for the kernel (options.go).
	kernel []string
}

// spillAt is the most one upload holds in memory before it spills (0: the
// default, upload.SpillAt). A variable only so that a test can lower it for
// its daemons: an upload past the default, 64 MiB, costs a race-built
// daemon ten seconds of CPU.
var spillAt int64

// mountFlagSet defines mount's flags into mf.
func mountFlagSet(mf *mountFlags) *pflag.FlagSet {
	fl := newFlags("mount", "[flags] CHECKPOINT MOUNTPOINT",
		"Mount CHECKPOINT at MOUNTPOINT: a .safetensors file, a sharded checkpoint's\n*.safetensors.index.json, or a directory holding one of them; or such a file or\ndirectory as an https://, http://, hf:// or s3:// URL (mounted read-only, read\nlazily through a local chunk cache). Runs in the background and returns once\nthe mount answers, unless -f is given.\n\nEvery flag can also be given as -o name or -o name=value ('_' for '-'), as\nin fstab: -o ro,allow_other,uid=1000,cache_size=20G. The kernel's options\n(noatime, nodev, ...) pass through; those of mount(8), fstab and systemd\n(noauto, nofail, _netdev, x-systemd.*) are accepted and ignored. Installed\nas /sbin/mount.fuse.safejaxfs, this is mount -t fuse.safejaxfs's helper.")
	fl.BoolVar(&mf.readOnly, "read-only", false, "mount read-only (-o ro; -o rw undoes it)")
	fl.StringVar(&mf.sep, "sep", ".", "key `SEP`arator that splits keys into directories ('/' always does too)")
	fl.BoolVar(&mf.npy, "npy", false, "list the <tensor>.npy views in directory listings (they can be opened either way)")
	fl.BoolVar(&mf.allowOther, "allow-other", false, "let other users access the mount, as its modes allow (non-root needs user_allow_other in /etc/fuse.conf)")
	fl.BoolVar(&mf.allowRoot, "allow-root", false, "let root access the mount too, but no other user (non-root needs user_allow_other in /etc/fuse.conf)")
	addPermFlags(fl, &mf.perm)
	fl.StringVar(&mf.fsname, "fsname", "", "the source `NAME` the mount table (df, findmnt) shows (default: the checkpoint's absolute path or URL)")
	fl.BoolVar(&mf.nonempty, "nonempty", false, "mount over a directory that is not empty (its files are hidden while mounted)")
	fl.StringArrayVarP(&mf.options, "options", "o", nil, "mount options, comma separated: any flag as name[=value], ro, rw, the kernel's (noatime, ...); see above")
	fl.BoolVar(&mf.debug, "debug", false, "log every FUSE request (implies nothing about -f; use with -f to see it)")
	fl.BoolVarP(&mf.foreground, "foreground", "f", false, "stay in the foreground; SIGINT/SIGTERM unmount (after writing edits back); with NOTIFY_SOCKET set (systemd Type=notify) it says when the mount is ready")
	fl.StringVar(&mf.logFile, "log-file", "", "append the daemon's log (failed reads and write-backs, remote retries) to `FILE` instead of a new file in the state directory ($XDG_RUNTIME_DIR/safejaxfs; the mount root's user.safejaxfs.log names it)")
	addRemoteFlags(fl, &mf.remote, true)
	addFilesFlags(fl, &mf.files)
	addProgressFlags(fl, &mf.progress, true)
	fl.BoolVar(&mf.sloppy, "sloppy", false, "skip unknown -o options instead of refusing them (mount -s)")
	fl.BoolVar(&mf.fake, "fake", false, "check everything, mount nothing (mount -f)")
	fl.MarkHidden("sloppy")
	fl.MarkHidden("fake")
	return fl
}

func runMount(args []string) (err error) {
	// A daemon started by spawnDaemon reports every failure, including
	// those before it serves, to the parent waiting for it.
	ready := readyPipe()
	defer func() {
		if err != nil {
			ready.fail(err)
		}
	}()
	var mf mountFlags
	fl := mountFlagSet(&mf)
	rest, err := parseFlags(fl, args, 2, 2)
	if err != nil {
		return err
	}
	kernel, skipped, err := applyOptions(fl, mf.options, mf.sloppy)
	if err != nil {
		return err
	}
	mf.kernel = kernel
	if ready == nil {
		for _, o := range skipped {
			fmt.Fprintf(os.Stderr, "safejaxfs: ignoring the unknown mount option %q (mount -s)\n", escapeControl(o))
		}
	}
	if mf.sep == "" {
		return fail(exitUsage, "--sep must not be empty")
	}
	if _, _, _, err := mf.perm.parsed(); err != nil {
		return err
	}
	if err := mf.files.check(); err != nil {
		return err
	}
	ckpt, mnt := rest[0], rest[1]
	wait := mountWait
	if remote.IsURL(ckpt) {
		// Checked by the daemon, over the network, before it mounts.
		if _, err := mf.remote.options(nil); err != nil {
			return err
		}
		wait = remoteMountWait
	} else if err := checkCheckpoint(ckpt); err != nil {
		return err
	}
	if err := checkMountpoint(mnt); err != nil {
		return err
	}
	if !mf.nonempty {
		if err := checkEmpty(mnt); err != nil {
			return err
		}
	}
	if mf.fake {
		return nil
	}
	if !mf.foreground {
		return spawnDaemon(args, mnt, wait, mf.progress)
	}
	return serve(ckpt, mnt, mf, ready)
}

// checkCheckpoint refuses quickly what cannot be a checkpoint (missing,
// not a regular file, a directory holding no single one), before a daemon
// is started; it reads no file. Validating the files, every shard and the
// index, is the daemon's, before it mounts.
func checkCheckpoint(path string) error {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fail(exitInvalid, "checkpoint %s does not exist", path)
	case err != nil:
		return fail(exitInvalid, "checkpoint %s: %v", path, err)
	case !st.IsDir() && !st.Mode().IsRegular():
		// Opening a FIFO would wait for a writer; a device is no file.
		return fail(exitInvalid, "checkpoint %s is not a regular file (%s)", path, fileKind(st.Mode()))
	}
	if _, err := safetensors.Resolve(path); err != nil {
		return fail(exitInvalid, "checkpoint %s: %v", path, err)
	}
	return nil
}

// writable reports whether every file of the checkpoint can be written.
func writable(loc *safetensors.Location) bool {
	files := loc.Paths
	if loc.Sharded() {
		files = append([]string{loc.Index}, files...)
	}
	for _, p := range files {
		if unix.Access(p, unix.W_OK) != nil {
			return false
		}
	}
	return true
}

func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return m.Type().String()
}

// checkMountpoint refuses what mount(2) would refuse less clearly, or would
// accept and then shadow: a mountpoint that is missing, not a directory,
// already mounted, or a dead FUSE mount.
func checkMountpoint(path string) error {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fail(exitMount, "mountpoint %s does not exist", path)
	case deadConn(err):
		return fail(exitMount, "mountpoint %s is a dead FUSE mount (its daemon is gone); run: safejaxfs unmount %s", path, path)
	case err != nil:
		return fail(exitMount, "mountpoint %s: %v", path, err)
	case !st.IsDir():
		return fail(exitMount, "mountpoint %s is not a directory", path)
	}
	mounted, err := isMountpoint(path)
	if err != nil {
		return fail(exitMount, "mountpoint %s: %v", path, err)
	}
	if mounted {
		// A stat of a FUSE root can come from the kernel's cache; statfs
		// always asks the server, so it tells a dead mount from a live one
		// (from a child: a hung one would keep this process, probe.go).
		a, answered := probeMounts([]string{path}, []probeKind{probeStatfs}, statusProbe)[0]
		switch {
		case !answered:
			return fail(exitMount, "mountpoint %s is already mounted, and that mount does not answer (no reply within %v); if it is a safejaxfs mount, run: safejaxfs unmount %s", path, statusProbe, path)
		case a.dead:
			return fail(exitMount, "mountpoint %s is a dead FUSE mount (its daemon is gone); run: safejaxfs unmount %s", path, path)
		}
		return fail(exitMount, "mountpoint %s is already mounted", path)
	}
	return nil
}

// isMountpoint reports whether path is the root of a mount: its device
// differs from its parent's, or it is its parent (/).
func isMountpoint(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, err
	}
	if err := unix.Stat(filepath.Join(path, ".."), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// serve opens, mounts and serves until unmounted or signalled. It reports
// readiness (or the reason it could not get there) to a waiting parent.
func serve(ckpt, mnt string, mf mountFlags, ready *ready) (err error) {
	// The daemon must not keep the caller's working directory busy, so
	// it works with absolute paths from /.
	isRemote := remote.IsURL(ckpt)
	shown := ckpt // for messages: a URL without its credentials
	if isRemote {
		shown = remote.Redact(ckpt)
	} else if ckpt, err = filepath.Abs(ckpt); err != nil {
		return fail(exitInvalid, "%v", err)
	} else {
		shown = ckpt
	}
	if mnt, err = filepath.Abs(mnt); err != nil {
		return fail(exitMount, "%v", err)
	}
	// A foreground daemon nobody waits for may be a systemd service
	// (Type=notify): it says when it is ready and when it stops.
	foreground := ready == nil
	if mf.logFile != "" {
		if mf.logFile, err = filepath.Abs(mf.logFile); err != nil {
			return fail(exitUsage, "--log-file: %v", err)
		}
	}
	if err := os.Chdir("/"); err != nil {
		return fail(exitMount, "%v", err)
	}
	logger, err := newDaemonLog(mnt, mf.logFile, ready)
	if err != nil {
		return err
	}
	// The log of a mount that ends cleanly goes with it; that of one that
	// failed stays, saying why (see daemonLog.close).
	defer func() {
		if err != nil {
			logger.Error("exiting: " + err.Error())
		}
		logger.close(err == nil)
	}()
	state := logger.state
	ropt, err := mf.remote.options(logger.Logger)
	if err != nil {
		return err
	}
	status := newStatusFile(state, mountStatus{Source: shown, Mountpoint: mnt, Remote: isRemote,
		Options: mountOptionsShown(&mf), LogFile: logger.path})
	defer status.close()
	if isRemote {
		status.update(func(st *mountStatus) { st.Cache = remoteCacheStatus(ropt) })
	}

	preferHugePages()   // the checkpoint's records are about to be made (hugepages.go)
	pacer := paceHeap() // and the collector waits for them (heap.go)
	readOnly := mf.readOnly
	// Resolved once, here, and handed to the checkpoint: a large index is
	// not read twice.
	var located *safetensors.Location
	var index *safetensors.Index
	if isRemote {
		readOnly = true // always, and documented so: no notice
	} else {
		if err := checkCheckpoint(ckpt); err != nil {
			return err
		}
		loc, idx, err := safetensors.Locate(ckpt)
		if err != nil {
			return fail(exitInvalid, "%v", err)
		}
		located, index = loc, idx
		// Like mount(8) with a write-protected device: fall back, say so.
		switch dirErr := writableDirs(loc); {
		case readOnly:
		case !writable(loc):
			logger.notice("%s is not writable: mounting read-only", ckpt)
			readOnly = true
		case dirErr != nil:
			logger.notice("%s cannot be saved into: %v: mounting read-only", ckpt, dirErr)
			readOnly = true
		}
	}
	if isRemote {
		// A hundred shards' headers take a while: the user sees them
		// arrive (through the parent that waits for a background daemon).
		var done func()
		if ready != nil {
			ropt.HeaderProgress = ready.progress
		} else {
			ropt.HeaderProgress, done = headerProgress(mf.progress)
			defer done()
		}
	}
	ck, err := checkpoint.Open(ckpt, checkpoint.Options{ReadOnly: readOnly, Remote: ropt, Located: located, Index: index, Logger: logger.Logger})
	if !readOnly && (errors.Is(err, checkpoint.ErrSymlink) || errors.Is(err, checkpoint.ErrLinked)) {
		// Files safejaxfs will not write (a symlink in the checkpoint's
		// directory, as in a Hugging Face cache snapshot; a file with
		// other hard links) can still be read: like an unwritable
		// directory, mount read-only and say why.
		logger.notice("%v: mounting read-only", err)
		readOnly = true
		ck, err = checkpoint.Open(ckpt, checkpoint.Options{ReadOnly: true, Remote: ropt, Located: located, Index: index, Logger: logger.Logger})
	}
	if errors.Is(err, checkpoint.ErrLocked) {
		return fail(exitMount, "%v", err)
	}
	var logErr *checkpoint.LogError
	if errors.As(err, &logErr) {
		return fail(exitWriteBack, "%v", err) // edits wait in a log it will not apply
	}
	if err != nil {
		if isRemote {
			return remoteOpenError(ckpt, err, ropt)
		}
		return fail(exitInvalid, "%v", explainOpen(ckpt, err))
	}
	noticeForeign(ck, readOnly, logger)
	status.update(func(st *mountStatus) { st.ReadOnly = ck.ReadOnly() }) // (a foreign format is always read-only)
	closed := false
	defer func() {
		if !closed {
			ck.Close()
		}
	}()
	perm, err := mountPerm(&mf.perm, located)
	if err != nil {
		return err
	}
	logger.printf("%s", permSummary(perm))
	dirs := recoveryDirs(state)
	fo := fs.Options{Sep: mf.sep, NPY: mf.npy, Logger: logger.Logger, LogPath: logger.path, RecoveryDirs: dirs, Perm: perm, Publish: status.publish, SpillAt: spillAt}
	mf.files.apply(&fo, ckpt)
	status.update(func(st *mountStatus) { st.FilesDir = fo.FilesDir })
	f, err := fs.New(ck, fo)
	if err != nil {
		return fail(exitMount, "%v", err)
	}
	// Signals are caught from before the mount exists: one that arrives
	// while mounting must unmount once the mount is up, not kill the
	// daemon and leave a dead mount behind.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	server, err := fs.Mount(mnt, f, fs.MountOptions{
		AllowOther: mf.allowOther,
		AllowRoot:  mf.allowRoot,
		FsName:     mf.fsname,
		Extra:      mf.kernel,
		Debug:      mf.debug,
		Logger:     logger.Logger,
	})
	if err != nil {
		return fail(exitMount, "mounting %s at %s: %s", shown, mnt, explainMountError(err, ""))
	}

	go func() {
		for s := range sigs {
			logger.printf("%v: unmounting %s", s, mnt)
			// Persist first: if the unmount itself is refused (busy), the
			// edits are safe anyway. Edits that can be saved nowhere keep
			// the mount up.
			sdNotify(foreground, "STOPPING=1\nSTATUS=writing edits back, then unmounting")
			extendStop(foreground)
			status.setState(stateWritingBack)
			if !saveBeforeUnmount(ck, logger, dirs) {
				status.setState(stateMounted)
				continue
			}
			if err := server.Unmount(); err != nil {
				logger.warnf("unmount %s: %v; detaching lazily", mnt, err)
				lazyUnmount(mnt)
			}
		}
	}()
	// fs.Mount has returned: go-fuse's start-up probe of the mount (a file
	// this process opens in it) is closed, so a kill from now on leaves a
	// dead mount, not a hung one.
	logger.printf("%s mounted at %s (pid %d)", shown, mnt, os.Getpid())
	status.serving(ck, f)
	ready.ok()
	sdNotify(foreground, "READY=1\nSTATUS=mounted "+mnt)
	// Parsing the headers left about as much garbage as stays live (for
	// 94k tensors in 163 shards, 60 MB of RSS next to 63 MB live): collect
	// it and give it back now, once the mount answers, rather than hold it.
	normalPages()
	pacer.started()
	go debug.FreeOSMemory()
	server.Wait()
	f.Wait() // a write-back whose asker was interrupted ends first
	// Tensors nothing gave a dtype are saved as U8: the log names them
	// all and is kept (the unmount's note names the first few and points
	// here).
	if keys := f.Untyped(); len(keys) > 0 {
		logger.Warn("tensors saved as 1-D U8: nothing gave them a dtype (cp, tar and rsync carry it only with cp -a, tar --xattrs, rsync -X; or setfattr -n user.safetensors.dtype while mounted)",
			"count", len(keys), "keys", strings.Join(keys, ", "))
		logger.keep = true
	}
	// Unmounted: persist what is left. The kernel is gone, so this is the
	// last chance; Close leaves a recovery file if the checkpoint can't
	// take the edits.
	closed = true
	status.setState(stateFinishing)
	sdNotify(foreground, "STOPPING=1\nSTATUS=unmounted: writing edits back")
	extendStop(foreground)
	if err := finish(ck, logger, dirs, status); err != nil {
		return err
	}
	// Written back: the times set through the mount are kept beside it.
	if err := f.SaveTimes(); err != nil {
		logger.warnf("%v (the next mount shows the checkpoint's time instead)", err)
	}
	return nil
}

// deadConn reports an error a FUSE mount answers once its daemon is gone:
// ENOTCONN, or ECONNABORTED after its connection was aborted.
func deadConn(err error) bool {
	return errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED)
}
