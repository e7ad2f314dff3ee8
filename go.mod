module github.com/safejaxfs/safejaxfs

go 1.26.8

require (
	github.com/edsrzf/mmap-go v1.2.0 // indirect
	github.com/hanwen/go-fuse/v2 v2.12.1 // indirect
	github.com/spf13/pflag v1.1.0 // indirect
	golang.org/x/sys v0.28.0 // indirect
)
