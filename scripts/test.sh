#!/usr/bin/env bash
# The one test command (README, CI): installs what the tests need when it can,
# then gofmt, go vet, the race-enabled test suite (which mounts for real and
# drives numpy), short fuzz runs, and the benchmark's smoke mode.
#
# On a fresh machine it needs the network once: Debian's mirrors (apt-get,
# as root, for the packages below) and the Go module proxy (the module's
# dependencies, and versitygw's source to build it). After that it runs
# offline.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: fusermount3 (non-root mounts), getfattr/setfattr, numpy for
# the interop tests (Debian's /usr/bin/python3, not whatever python3 is on PATH),
# strace for the fsync-ordering test, nginx-light as the HTTP server of the
# remote-read tests, rsync and tar for the backup/restore tests.
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v getfattr >/dev/null || need+=(attr)
command -v strace >/dev/null || need+=(strace)
command -v rsync >/dev/null || need+=(rsync)
command -v tar >/dev/null || need+=(tar)
/usr/bin/python3 -c 'import numpy' 2>/dev/null || need+=(python3-numpy)
# PyTorch and msgpack write the foreign checkpoints the format tests read.
/usr/bin/python3 -c 'import torch' 2>/dev/null || need+=(python3-torch)
/usr/bin/python3 -c 'import msgpack' 2>/dev/null || need+=(python3-msgpack)
if ((${#need[@]})); then
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
fi
# The S3 server of the remote-read tests, pinned, built into a cache
# directory of its own (not $(go env GOPATH)/bin) and reused while its
# version matches (building it takes minutes). The tests find it there by
# the same rule (internal/testsrv/s3.go), and fail under CI without it.
vgw_version=v1.8.0
vgw_dir="${XDG_CACHE_HOME:-$HOME/.cache}/safejaxfs-test/bin"
vgw="$vgw_dir/versitygw"
if ! go version -m "$vgw" 2>/dev/null | grep -Eq "^\s+mod\s+github.com/versity/versitygw\s+$vgw_version\b"; then
  echo "== building versitygw $vgw_version into $vgw_dir (a few minutes, once)"
  mkdir -p "$vgw_dir"
  GOBIN="$vgw_dir" GOFLAGS=-buildvcs=false nice -n 10 go install "github.com/versity/versitygw/cmd/versitygw@$vgw_version"
fi
export SAFEJAXFS_VERSITYGW="$vgw"
# Mount tests must run, not skip: no FUSE is a failure here.
[ -c /dev/fuse ] || { echo "/dev/fuse is missing: the mount tests cannot run" >&2; exit 1; }

# Everything this run creates (the tests' temp dirs and mountpoints, the
# benchmark's work dir) goes under one directory of its own, so the check for
# leftover mounts at the end looks at this run's mounts only: other runs on the
# same machine (other worktrees, CI jobs) mount under their own directories.
run_tmp=$(mktemp -d "${TMPDIR:-/tmp}/safejaxfs-test.XXXXXX")
# Searchable by others, as /tmp is: the non-root tests run as nobody.
chmod 0755 "$run_tmp"
export TMPDIR=$run_tmp
# Mounts and processes of this run: anything mounted under $run_tmp (the
# tests' FUSE mounts, and the small tmpfs disks of the disk-full tests), and
# any process whose command line names it (daemons, nginx, versitygw).
our_mounts() { awk -v d="$run_tmp/" 'index($2, d) == 1' /proc/mounts; }
our_procs() {
  local p c
  for p in /proc/[0-9]*; do
    c=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue # gone meanwhile
    [ "${p#/proc/}" != "$$" ] && [[ $c == *"$run_tmp/"* ]] && echo "${p#/proc/} $c"
  done
  return 0
}
cleanup() {
  local m pid
  for pid in $(our_procs | awk '{print $1}'); do kill -KILL "$pid" 2>/dev/null || true; done
  # Deepest first: a safejaxfs mount on a tmpfs disk goes before the disk.
  for m in $(our_mounts | awk '{print $2}' | sort -r); do
    umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
  done
  rm -rf "$run_tmp"
}
trap cleanup EXIT

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
[ -z "$bad" ] || { echo "not gofmt-formatted: $bad" >&2; exit 1; }

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 15m ./...

# The exhaustive walks (every byte of a log cut, every system call of a
# commit, every crash point, every round of kill -9) again, whole, in a
# plain build: under -race they take a sample (internal/race), as the
# detector learns nothing from a walk's later steps and they cost 5-10
# times as much there. A test that samples must be in this pass.
echo "== exhaustive walks (plain build)"
samplers=$(git grep -l -e 'race\.Sample' -e 'race\.Rounds' -- '*_test.go' | grep -v -e '^safetensors/checkpoint/' -e '^cmd/safejaxfs/crash' || true)
[ -z "$samplers" ] || { echo "tests that sample under -race but are not in the plain pass: $samplers" >&2; exit 1; }
go test -count=1 ./safetensors/checkpoint/
go test -count=1 -run '^TestCrashKill' ./cmd/safejaxfs/

# Bounded by a count of inputs, not a duration: time-bounded fuzzing fails
# now and then with only "context deadline exceeded" (golang/go#75804, not
# fixed in go1.26.8). The counts take 10-20 s each on 2 cores.
echo "== fuzz (short)"
go test -run='^$' -fuzz='^FuzzReadHeader$' -fuzztime=600000x ./safetensors/
go test -run='^$' -fuzz='^FuzzParse$' -fuzztime=1000000x ./safetensors/npy/
for f in FuzzOpen FuzzMsgpack FuzzPickle; do
  go test -run='^$' -fuzz="^$f\$" -fuzztime=20000x ./safetensors/formats/
done
# Logs beside a checkpoint: each case writes and opens a real file.
go test -run='^$' -fuzz='^FuzzLog$' -fuzztime=2000x ./safetensors/checkpoint/
go test -run='^$' -fuzz='^FuzzLogRecords$' -fuzztime=3000x ./safetensors/checkpoint/

if [ -x scripts/bench ]; then
  echo "== bench (smoke)"
  scripts/bench --smoke
fi

# Nothing of this run may outlive it: no mount, no process, no file.
left=$(our_mounts)
[ -z "$left" ] || { echo "tests left mounts behind:" >&2; echo "$left" >&2; exit 1; }
left=$(our_procs)
[ -z "$left" ] || { echo "tests left processes behind:" >&2; echo "$left" >&2; exit 1; }
left=$(find "$run_tmp" -mindepth 1 -maxdepth 2 | head -20)
[ -z "$left" ] || { echo "tests left files behind in $run_tmp:" >&2; echo "$left" >&2; exit 1; }
echo "== all tests passed"
