#!/usr/bin/env bash
# The one test command (README, CI): installs what the tests need when it can,
# then gofmt, go vet, the race-enabled test suite (which mounts for real and
# drives numpy), short fuzz runs, and the benchmark's smoke mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: fusermount3 (non-root mounts), getfattr/setfattr, numpy for
# the interop tests (Debian's /usr/bin/python3, not whatever python3 is on PATH),
# strace for the fsync-ordering test, rsync and tar for the backup/restore tests.
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v getfattr >/dev/null || need+=(attr)
command -v strace >/dev/null || need+=(strace)
command -v rsync >/dev/null || need+=(rsync)
command -v tar >/dev/null || need+=(tar)
/usr/bin/python3 -c 'import numpy' 2>/dev/null || need+=(python3-numpy)
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
# Mount tests must run, not skip: no FUSE is a failure here.
[ -c /dev/fuse ] || { echo "/dev/fuse is missing: the mount tests cannot run" >&2; exit 1; }

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
[ -z "$bad" ] || { echo "not gofmt-formatted: $bad" >&2; exit 1; }

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 15m ./...

echo "== fuzz (short)"
go test -run='^$' -fuzz='^FuzzReadHeader$' -fuzztime=20s ./safetensors/
go test -run='^$' -fuzz='^FuzzParse$' -fuzztime=10s ./safetensors/npy/

if [ -x scripts/bench ]; then
  echo "== bench (smoke)"
  scripts/bench --smoke
fi

left=$(grep ' fuse.safejaxfs ' /proc/mounts || true)
[ -z "$left" ] || { echo "tests left mounts behind:" >&2; echo "$left" >&2; exit 1; }
echo "== all tests passed"
