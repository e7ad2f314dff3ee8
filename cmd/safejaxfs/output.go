package main

import (
	"bufio"
	"os"
)

// tableOut is stdout, buffered, for the tables and JSON that ls, stats and
// diff print, a line per tensor: tabwriter writes every cell on its own,
// so unbuffered a 94k-tensor listing made millions of write(2)s (two
// thirds of ls's time, 1.9M for stats). Flush it once done.
func tableOut() *bufio.Writer { return bufio.NewWriterSize(os.Stdout, 64<<10) }
