package remote

import (
	"path/filepath"
	"testing"
)

// Cache is what Open uses: withDefaults takes its answer, and status shows it.
func TestOptionsCache(t *testing.T) {
	xdg := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", xdg)
	for _, c := range []struct {
		o     Options
		dir   string
		limit int64
	}{
		{Options{}, filepath.Join(xdg, "safejaxfs"), DefaultCacheSize},
		{Options{CacheDir: "/c", CacheSize: 1}, "/c", MinCacheSize},
		{Options{CacheSize: 1 << 30}, filepath.Join(xdg, "safejaxfs"), 1 << 30},
	} {
		dir, limit, err := c.o.Cache()
		if err != nil || dir != c.dir || limit != c.limit {
			t.Errorf("%+v.Cache() = %q, %d, %v; want %q, %d", c.o, dir, limit, err, c.dir, c.limit)
		}
		d, err := c.o.withDefaults()
		if err != nil || d.CacheDir != dir || d.CacheSize != limit {
			t.Errorf("%+v.withDefaults() = %q, %d, %v; want Cache's %q, %d", c.o, d.CacheDir, d.CacheSize, err, dir, limit)
		}
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "")
	if _, _, err := (Options{}).Cache(); err == nil {
		t.Error("Cache without XDG_CACHE_HOME or HOME: no error")
	}
}
