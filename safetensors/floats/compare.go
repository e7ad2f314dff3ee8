package floats

import (
	"bytes"
	"math"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Diff compares two tensors of one dtype and shape element by element, fed
// in order as pairs of equally long pieces (Add). Two elements are equal
// when their values are: NaN equals NaN, +0 equals -0, integers exactly.
// The differences are measured over the elements finite in both:
//
//	abs = |a - b|        rel = |a - b| / max(|a|, |b|)   (0 when both are 0)
//
// rel is symmetric (diff A B and diff B A agree) and at most 2. An
// element that is NaN or ±Inf in one tensor and not the same in the other
// counts in NonFinite (and in Differ) but not in the maxima. C64 elements
// compare as complex numbers (|a - b| is the modulus).
type Diff struct {
	DType safetensors.DType
	// Count is the elements compared; Differ those whose values differ.
	Count, Differ, NonFinite uint64
	// MaxAbs and MaxRel are the largest differences over the elements
	// finite in both (0 when there is none).
	MaxAbs, MaxRel float64
	// BytesEqual stays true while every byte so far is equal.
	BytesEqual bool

	cls    class
	fa, fb []float64
	f32    []float32
	ia, ib []int64
	ua, ub []uint64
	ca, cb []complex128
	pa, pb []byte // a partial group of each side, until the next Add
}

// NewDiff starts a comparison of two tensors of dtype d.
func NewDiff(d safetensors.DType) *Diff {
	return &Diff{DType: d, cls: classOf(d), BytesEqual: true}
}

// buffers makes the scratch buffers hold k elements (k <= block), as
// Stats.buffers does: none for tensors whose bytes are equal (most of a
// diff of two checkpoints that share layers), as many as the first
// differing piece needs, a whole block once a later one needs more.
func (c *Diff) buffers(k int) {
	n := block
	switch c.cls {
	case classFloat:
		if len(c.fa) >= k {
			return
		}
		if c.fa == nil {
			n = k
		}
		c.fa, c.fb, c.f32 = make([]float64, n), make([]float64, n), make([]float32, n)
	case classSigned:
		if len(c.ia) >= k {
			return
		}
		if c.ia == nil {
			n = k
		}
		c.ia, c.ib = make([]int64, n), make([]int64, n)
	case classUnsigned:
		if len(c.ua) >= k {
			return
		}
		if c.ua == nil {
			n = k
		}
		c.ua, c.ub = make([]uint64, n), make([]uint64, n)
	case classComplex:
		if len(c.ca) >= k {
			return
		}
		if c.ca == nil {
			n = k
		}
		c.ca, c.cb = make([]complex128, n), make([]complex128, n)
	}
}

// Add compares the next bytes of both tensors; a and b must be equally
// long. Pieces may split an element, as for Stats.Add.
func (c *Diff) Add(a, b []byte) {
	if len(a) != len(b) {
		panic("floats: Diff.Add of unequal pieces")
	}
	if c.BytesEqual && !bytes.Equal(a, b) {
		c.BytesEqual = false
	}
	g := elemBytes(c.DType)
	if len(c.pa) > 0 {
		k := min(g-len(c.pa), len(a))
		c.pa, c.pb = append(c.pa, a[:k]...), append(c.pb, b[:k]...)
		a, b = a[k:], b[k:]
		if len(c.pa) < g {
			return
		}
		c.add(c.pa, c.pb)
		c.pa, c.pb = c.pa[:0], c.pb[:0]
	}
	whole := len(a) - len(a)%g
	c.add(a[:whole], b[:whole])
	c.pa, c.pb = append(c.pa, a[whole:]...), append(c.pb, b[whole:]...)
}

func (c *Diff) add(a, b []byte) {
	d := c.DType
	per := d.Bits()
	for len(a) > 0 {
		k := min(block, len(a)*8/per)
		n := k * per / 8
		sa, sb := a[:n], b[:n]
		a, b = a[n:], b[n:]
		c.Count += uint64(k)
		if bytes.Equal(sa, sb) {
			continue // equal bytes: equal values, no difference to measure
		}
		c.buffers(k)
		switch c.cls {
		case classFloat:
			toFloats(d, c.fa[:k], sa, c.f32)
			toFloats(d, c.fb[:k], sb, c.f32)
			for i, x := range c.fa[:k] {
				c.floats(x, c.fb[i])
			}
		case classSigned:
			toSigned(d, c.ia[:k], sa)
			toSigned(d, c.ib[:k], sb)
			for i, x := range c.ia[:k] {
				y := c.ib[i]
				if x == y {
					continue
				}
				c.Differ++
				// |x - y| exactly, even when x - y overflows int64.
				var ad uint64
				if x > y {
					ad = uint64(x) - uint64(y)
				} else {
					ad = uint64(y) - uint64(x)
				}
				c.measure(float64(ad), max(absInt(x), absInt(y)))
			}
		case classUnsigned:
			toUnsigned(d, c.ua[:k], sa)
			toUnsigned(d, c.ub[:k], sb)
			for i, x := range c.ua[:k] {
				y := c.ub[i]
				if x == y {
					continue
				}
				c.Differ++
				ad := max(x, y) - min(x, y)
				c.measure(float64(ad), float64(max(x, y)))
			}
		case classComplex:
			toComplex(c.ca[:k], sa)
			toComplex(c.cb[:k], sb)
			for i, x := range c.ca[:k] {
				c.complexes(x, c.cb[i])
			}
		}
	}
}

func absInt(x int64) float64 { return math.Abs(float64(x)) }

func (c *Diff) floats(x, y float64) {
	if x == y || (x != x && y != y) {
		return // equal values (±0, same Inf), or NaN and NaN
	}
	c.Differ++
	if x-x != 0 || y-y != 0 {
		c.NonFinite++
		return
	}
	c.measure(math.Abs(x-y), max(math.Abs(x), math.Abs(y)))
}

func (c *Diff) complexes(x, y complex128) {
	nanX := math.IsNaN(real(x)) || math.IsNaN(imag(x))
	nanY := math.IsNaN(real(y)) || math.IsNaN(imag(y))
	if x == y || (nanX && nanY) {
		return
	}
	c.Differ++
	if !finiteC(x) || !finiteC(y) {
		c.NonFinite++
		return
	}
	z := x - y
	c.measure(math.Hypot(real(z), imag(z)), max(math.Hypot(real(x), imag(x)), math.Hypot(real(y), imag(y))))
}

func finiteC(z complex128) bool {
	re, im := real(z), imag(z)
	return re-re == 0 && im-im == 0
}

// measure records one difference: ad = |a - b|, scale = max(|a|, |b|) > 0.
func (c *Diff) measure(ad, scale float64) {
	c.MaxAbs = max(c.MaxAbs, ad)
	if scale > 0 {
		c.MaxRel = max(c.MaxRel, ad/scale)
	}
}
