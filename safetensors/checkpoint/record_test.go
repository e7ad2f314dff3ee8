package checkpoint

import (
	"math"
	"testing"
	"time"
	"unsafe"
)

// TestTensorRecordSize keeps the per-tensor record small: there is one per
// tensor (94,553 for DeepSeek-V3), held for the whole mount. A new field
// is welcome, but placed where it adds no padding and with this bound
// raised knowingly.
func TestTensorRecordSize(t *testing.T) {
	t.Parallel()
	if got := unsafe.Sizeof(tensor{}); got > 136 {
		t.Errorf("tensor record is %d bytes, want at most 136", got)
	}
}

// TestNanos checks that the times a record keeps round-trip exactly
// within the years an int64 of nanoseconds holds, epoch 0 included (a
// reproducible build's mtime), and are clamped outside them.
func TestNanos(t *testing.T) {
	t.Parallel()
	for _, tm := range []time.Time{
		time.Unix(0, 0),
		time.Unix(1, 0),
		time.Unix(-1, 999999999),
		time.Date(2026, 12, 7, 12, 0, 0, 123456789, time.UTC),
		time.Date(1901, 12, 13, 20, 45, 52, 0, time.UTC),
		time.Unix(0, math.MaxInt64),
		time.Unix(0, math.MinInt64),
	} {
		if back := time.Unix(0, nanos(tm)); !back.Equal(tm) {
			t.Errorf("%v came back as %v", tm, back)
		}
	}
	if got := nanos(time.Date(2400, 1, 1, 0, 0, 0, 0, time.UTC)); got != math.MaxInt64 {
		t.Errorf("2400: %d, want the latest time", got)
	}
	if got := nanos(time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC)); got != math.MinInt64 {
		t.Errorf("1500: %d, want the earliest time", got)
	}
	if got := nanos(time.Time{}); got != math.MinInt64 {
		t.Errorf("the zero time: %d, want the earliest time", got)
	}
}
