// Command safejaxfs mounts a safetensors checkpoint as a directory tree.
//
// main.go holds the subcommand dispatch and the exit codes; each subcommand
// lives in a file of its own.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
)

// Exit codes, documented in the README.
const (
	exitOK        = 0
	exitInvalid   = 1 // checkpoint missing, unreadable or not a valid safetensors file
	exitUsage     = 2 // bad command line
	exitMount     = 3 // mount or unmount failed (mountpoint problems, FUSE errors)
	exitWriteBack = 4 // edits could not be written back to the checkpoint
)

// exitError carries the exit code a failure should end the process with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func fail(code int, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

type command struct {
	name    string
	args    string
	summary string
	run     func(args []string) error
}

var commands = []command{
	{"mount", "[flags] CHECKPOINT MOUNTPOINT", "mount a checkpoint as a directory tree", runMount},
	{"unmount", "[flags] MOUNTPOINT", "unmount, waiting for the daemon to finish", runUnmount},
	{"ls", "[flags] CHECKPOINT [PREFIX]", "list tensors as a tree without mounting", runLs},
	{"verify", "CHECKPOINT", "check a checkpoint strictly; exit 0 if valid, 1 if not", runVerify},
	{"stats", "[flags] CHECKPOINT [PREFIX]", "min, max, mean, std, NaN/Inf/zero counts per tensor", runStats},
	{"diff", "[flags] A B [PREFIX]", "compare two checkpoints; exit 0 if identical, 1 if not", runDiff},
	{"convert", "[flags] IN OUT [PREFIX]", "write a checkpoint (any format read) as .safetensors or Flax .msgpack", runConvert},
	{"sync", "MOUNTPOINT", "write a mount's edits back into the checkpoint files now", runSync},
	{"recover", "CHECKPOINT", "finish, without mounting, a write-back a crash interrupted", runRecover},
	{"version", "", "print the version of this build (also: safejaxfs --version)", runVersion},
}

func usage() {
	fmt.Fprintf(os.Stderr, "safejaxfs mounts a safetensors checkpoint as a directory tree.\n\nUsage:\n")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  safejaxfs %-8s %-32s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'safejaxfs COMMAND --help' for a command's flags.\n")
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		usage()
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage()
		return exitOK
	case "--version", "-V":
		fmt.Println(version())
		return exitOK
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:])
		if err == nil {
			return exitOK
		}
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		var ee *exitError
		if errors.As(err, &ee) && ee.err == nil {
			return ee.code // the code is the answer (diff: 1, they differ)
		}
		// Messages may quote keys, paths and server text: no control
		// character reaches the terminal.
		fmt.Fprintf(os.Stderr, "safejaxfs %s: %s\n", c.name, escapeControl(err.Error()))
		if errors.As(err, &ee) {
			return ee.code
		}
		return exitMount
	}
	fmt.Fprintf(os.Stderr, "safejaxfs: unknown command %q\n", args[0])
	usage()
	return exitUsage
}

// newFlags makes a subcommand's flag set with a usage line naming its
// arguments. Parse errors become usage errors (exit 2).
func newFlags(name, argsUsage, summary string) *pflag.FlagSet {
	fl := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fl.SortFlags = false
	fl.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: safejaxfs %s %s\n\n%s\n\nFlags:\n%s", name, argsUsage, summary, fl.FlagUsages())
	}
	return fl
}

func parseFlags(fl *pflag.FlagSet, args []string, min, max int) ([]string, error) {
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, &exitError{code: exitUsage, err: err}
	}
	rest := fl.Args()
	if len(rest) < min || len(rest) > max {
		fl.Usage()
		return nil, fail(exitUsage, "wrong number of arguments")
	}
	return rest, nil
}
