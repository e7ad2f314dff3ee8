module github.com/safejaxfs/safejaxfs

go 1.26.8

require (
	github.com/edsrzf/mmap-go v1.2.0
	github.com/hanwen/go-fuse/v2 v2.12.1
	github.com/spf13/pflag v1.1.0
	golang.org/x/sys v0.28.0
)
