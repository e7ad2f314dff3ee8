package fs

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MountEntry is a line of /proc/self/mountinfo.
type MountEntry struct {
	ID     string // the mount's ID (unique while it exists; /proc/self/fdinfo's mnt_id)
	Dev    string // "major:minor", the mount's device (its FUSE bdi)
	FSType string // e.g. fuse.safejaxfs
	Source string // the checkpoint, for safejaxfs mounts (or what fsname= said)
	Owner  int    // the FUSE mount's user_id: who mounted it; -1 if not shown
}

// FindMount returns the mount on top at path, without touching the mount
// itself (from inside the daemon a stat of its own mount is a request to
// itself; from outside, a dead mount would answer ENOTCONN).
func FindMount(path string) (m MountEntry, found bool, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return m, false, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return m, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		// Split at spaces only: the kernel escapes space, tab, newline and
		// backslash in paths, but not a CR or other whitespace.
		fields := strings.Split(sc.Text(), " ")
		if len(fields) < 7 || UnescapeMountinfo(fields[4]) != abs {
			continue
		}
		for i := 6; i < len(fields)-1; i++ {
			if fields[i] == "-" {
				// Later lines are mounted on top of earlier ones.
				m, found = MountEntry{ID: fields[0], Dev: fields[2], FSType: fields[i+1], Owner: -1}, true
				if i+2 < len(fields) {
					m.Source = UnescapeMountinfo(fields[i+2])
				}
				if i+3 < len(fields) {
					for _, o := range strings.Split(fields[i+3], ",") {
						if v, ok := strings.CutPrefix(o, "user_id="); ok {
							if n, err := strconv.Atoi(v); err == nil {
								m.Owner = n
							}
						}
					}
				}
				break
			}
		}
	}
	return m, found, sc.Err()
}

// UnescapeMountinfo undoes mountinfo's escapes (\040 for a space, ...).
func UnescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
