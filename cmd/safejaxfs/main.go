// Command safejaxfs mounts a safetensors checkpoint as a directory tree.
//
// main.go holds the subcommand dispatch and the exit codes; each subcommand
// lives in a file of its own.
package main

import (
	"errors"
	"fmt"
	"io"
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
	// exitInterrupted: Ctrl-C (or SIGTERM) stopped a wait for a write-back,
	// which goes on in the daemon; 128 + SIGINT, as a shell reports it.
	exitInterrupted = 130
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
	{"wait", "[flags] CHECKPOINT", "wait until no mount is writing the checkpoint back (after any unmount)", runWait},
	{"status", "[--json]", "list the mounts: source, pid, pending edits, cache, last error, log", runStatus},
	{"ls", "[flags] CHECKPOINT [PREFIX]", "list tensors as a tree without mounting", runLs},
	{"verify", "CHECKPOINT", "check a checkpoint strictly; exit 0 if valid, 1 if not", runVerify},
	{"stats", "[flags] CHECKPOINT [PREFIX]", "min, max, mean, std, NaN/Inf/zero counts per tensor", runStats},
	{"diff", "[flags] A B [PREFIX]", "compare two checkpoints; exit 0 if identical, 1 if not", runDiff},
	{"convert", "[flags] IN OUT [PREFIX]", "write a checkpoint (any format read) as .safetensors or Flax .msgpack", runConvert},
	{"sync", "MOUNTPOINT", "write a mount's edits back into the checkpoint files now", runSync},
	{"recover", "CHECKPOINT", "finish, without mounting, a write-back a crash interrupted", runRecover},
	{"version", "", "print the version of this build (also: safejaxfs --version)", runVersion},
}

// usage prints the list of commands: on stdout when asked for (--help),
// on stderr when the command line was wrong.
func usage(w io.Writer) {
	fmt.Fprintf(w, "safejaxfs mounts a safetensors checkpoint as a directory tree.\n\nUsage:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  safejaxfs %-8s %-32s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'safejaxfs COMMAND --help' for a command's flags. Also: safejaxfs --version.\n")
	fmt.Fprintf(w, "As mount(8)'s helper (installed as /sbin/mount.fuse.safejaxfs, or through\nmount.fuse3): mount -t fuse.safejaxfs CHECKPOINT MOUNTPOINT -o OPTIONS.\n")
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	// mount(8) runs /sbin/mount.fuse.safejaxfs SOURCE DIR [-o OPTIONS]; its
	// fallback mount.fuse3 runs "safejaxfs SOURCE DIR -o OPTIONS".
	if isMountHelper(os.Args[0]) {
		return exitCode("mount", runMountHelper(args))
	}
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help":
		usage(os.Stdout)
		return exitOK
	case "help":
		if len(args) > 1 {
			return run([]string{args[1], "--help"})
		}
		usage(os.Stdout)
		return exitOK
	case "--version", "-V":
		fmt.Println(versionString())
		return exitOK
	case probeCommand: // status's probe child (probe.go), not for users
		return runProbe(args[1:])
	}
	for _, c := range commands {
		if c.name == args[0] {
			return exitCode(c.name, c.run(args[1:]))
		}
	}
	if helperCall(args) {
		return exitCode("mount", runMountHelper(args))
	}
	fmt.Fprintf(os.Stderr, "safejaxfs: unknown command %q\n", escapeControl(args[0]))
	usage(os.Stderr)
	return exitUsage
}

// exitCode reports what command name ended with and returns its exit code.
func exitCode(name string, err error) int {
	if err == nil || errors.Is(err, pflag.ErrHelp) {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) && ee.err == nil {
		return ee.code // the code is the answer (diff: 1, they differ)
	}
	// Messages may quote keys, paths and server text: no control
	// character reaches the terminal.
	fmt.Fprintf(os.Stderr, "safejaxfs %s: %s\n", name, escapeControl(err.Error()))
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitMount
}

// newFlags makes a subcommand's flag set with a usage line naming its
// arguments. Parse errors become usage errors (exit 2).
// --help prints the usage on stdout (pflag calls Usage for it and
// nothing else); a wrong command line prints it on stderr.
func newFlags(name, argsUsage, summary string) *pflag.FlagSet {
	fl := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fl.SortFlags = false
	// pflag's own messages (unknown flag) are returned, not printed.
	fl.SetOutput(io.Discard)
	fl.Usage = func() { writeUsage(os.Stdout, fl, name, argsUsage, summary) }
	usageOf[fl] = func(w io.Writer) { writeUsage(w, fl, name, argsUsage, summary) }
	return fl
}

// usageOf prints a flag set's usage to a writer of choice.
var usageOf = map[*pflag.FlagSet]func(io.Writer){}

func writeUsage(w io.Writer, fl *pflag.FlagSet, name, argsUsage, summary string) {
	fmt.Fprintf(w, "Usage: safejaxfs %s %s\n\n%s\n", name, argsUsage, summary)
	if f := fl.FlagUsages(); f != "" {
		fmt.Fprintf(w, "\nFlags:\n%s", f)
	}
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
		usageOf[fl](os.Stderr)
		return nil, fail(exitUsage, "wrong number of arguments")
	}
	return rest, nil
}
