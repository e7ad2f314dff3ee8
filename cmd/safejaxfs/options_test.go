package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// -o options as sshfs, rclone mount and fstab take them.

func TestSplitOptions(t *testing.T) {
	got := splitOptions([]string{"ro,allow_other", " files_include=a\\,b , ", "x", `fsname=back\\slash`})
	want := []string{"ro", "allow_other", "files_include=a,b", "x", `fsname=back\slash`}
	if !slices.Equal(got, want) {
		t.Errorf("splitOptions: %q, want %q", got, want)
	}
}

func TestApplyOptions(t *testing.T) {
	var mf mountFlags
	fl := mountFlagSet(&mf)
	if err := fl.Parse(nil); err != nil {
		t.Fatal(err)
	}
	all := "ro,npy,allow_other,allow_root,uid=12,gid=34,umask=027,fsname=ck,nonempty,cache_size=1G,cache-dir=/c," +
		"noatime,nodev,nosuid,dev,suid,_netdev,noauto,auto,nofail,user,users,defaults,x-systemd.automount," +
		"x-systemd.requires=network-online.target,comment=systemd.automount,default_permissions,sep=/," +
		"s3_endpoint=http://h:9000,allow_unversioned,files_dir=files,log_file=/tmp/l,debug,context=system_u:object_r:tmp_t:s0"
	kernel, skipped, err := applyOptions(fl, []string{all, "files_include=a.json\\,b.txt"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(skipped) != 0 {
		t.Errorf("skipped %q", skipped)
	}
	if want := []string{"noatime", "nodev", "nosuid", "dev", "suid", "context=system_u:object_r:tmp_t:s0"}; !slices.Equal(kernel, want) {
		t.Errorf("kernel options %q, want %q", kernel, want)
	}
	if !mf.readOnly || !mf.npy || !mf.allowOther || !mf.allowRoot || !mf.nonempty || !mf.debug || !mf.remote.allowUnversioned {
		t.Errorf("boolean options not applied: %+v", mf)
	}
	if mf.perm != (permFlags{"12", "34", "027"}) || mf.fsname != "ck" || mf.sep != "/" || mf.logFile != "/tmp/l" {
		t.Errorf("valued options not applied: perm %+v fsname %q sep %q log %q", mf.perm, mf.fsname, mf.sep, mf.logFile)
	}
	if mf.remote.cacheSize != "1G" || mf.remote.cacheDir != "/c" || mf.remote.s3Endpoint != "http://h:9000" || mf.files.dir != "files" {
		t.Errorf("long flags as options not applied: %+v %+v", mf.remote, mf.files)
	}
	if !slices.Equal(mf.files.include, []string{"a.json", "b.txt"}) {
		t.Errorf("files_include: %q", mf.files.include)
	}
	if _, _, err := applyOptions(fl, []string{"rw"}, false); err != nil || mf.readOnly {
		t.Errorf("rw after ro: %v, read-only %v", err, mf.readOnly)
	}

	for _, bad := range []string{"bogus", "cache_size", "foreground", "options=x", "help", "noatime=1", "umask"} {
		_, _, err := applyOptions(fl, []string{bad}, false)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != exitUsage {
			t.Errorf("-o %s: %v, want a usage error", bad, err)
		}
	}
	_, _, err = applyOptions(fl, []string{"bogus"}, false)
	for _, want := range []string{`"bogus"`, "ro, rw", "allow_other", "cache_size=SIZE", "uid=USER", "noatime", "x-*", "_netdev"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("refusal of an unknown option %v does not list %q", err, want)
		}
	}
	_, skipped, err = applyOptions(fl, []string{"bogus,npy"}, true)
	if err != nil || !slices.Equal(skipped, []string{"bogus"}) {
		t.Errorf("sloppy: %v, skipped %q", err, skipped)
	}
}

// A mount with -o: what each option does, seen through the mount.
func TestMountWithOptions(t *testing.T) {
	ckpt := flaxModel(t)
	mnt := mount(t, ckpt, "-o", "ro,npy,fsname=my-model,noatime,_netdev,x-systemd.automount")
	if _, err := os.Stat(filepath.Join(mnt, "params", "Dense_0", "bias.npy")); err != nil {
		t.Error(err)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "params", "Dense_0"))
	if err != nil || len(ents) != 4 {
		t.Errorf("-o npy: listing %v %v, want the tensors and their views", ents, err)
	}
	src, opts := procMount(t, mnt)
	if src != "my-model" {
		t.Errorf("-o fsname=my-model: the mount table shows %q", src)
	}
	if !strings.HasPrefix(opts, "ro,") || !strings.Contains(opts, "noatime") || !strings.Contains(opts, "default_permissions") {
		t.Errorf("kernel options %q: want ro, noatime and default_permissions", opts)
	}
	err = os.WriteFile(filepath.Join(mnt, "params", "Dense_0", "bias"), make([]byte, 64), 0)
	if !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EACCES) {
		t.Errorf("-o ro: writing a tensor: %v", err)
	}
	unmountOK(t, mnt)

	r := cli(t, "mount", "-o", "ro,npy,frobnicate", ckpt, mnt)
	if r.code != exitUsage || !strings.Contains(r.stderr, `"frobnicate"`) || !strings.Contains(r.stderr, "known:") || mounted(t, mnt) {
		t.Errorf("unknown option: exit %d %q", r.code, r.stderr)
	}
	// ro then rw: the last one wins, as for mount(8).
	mnt2 := mount(t, ckpt, "-o", "ro", "-o", "rw")
	if err := os.WriteFile(filepath.Join(mnt2, "step_scale"), make([]byte, 4), 0); err != nil {
		t.Errorf("-o ro -o rw: %v", err)
	}
}
