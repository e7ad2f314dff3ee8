package floats

import (
	"fmt"
	"math"

	"github.com/safejaxfs/safejaxfs/safetensors"
)

// Stats summarizes a tensor's elements, fed in order or in pieces that are
// merged: count, NaN / Inf / zero counts, and min, max, mean and
// (population) standard deviation of the finite elements — what numpy
// gives for a[np.isfinite(a)] with min(), max(), mean(dtype=np.float64),
// std(dtype=np.float64). Integers and BOOL (0/1) have exact min and max.
// C64 elements are summarized by their magnitude |z|; one is NaN if a
// part is, Inf if a part is and none is NaN.
//
// Mean and deviation are computed in float64 a block at a time, two passes
// over the block (its mean, then squared deviations from it), and blocks
// are combined with Chan et al.'s pairwise update: no sum of squares that
// cancels, no drift over billions of elements.
type Stats struct {
	DType safetensors.DType
	// Count is the elements seen; NaN, Inf and Zeros count among them
	// (Zeros includes -0).
	Count, NaN, Inf, Zeros uint64

	n          uint64 // finite elements
	mean, m2   float64
	minF, maxF float64
	minI, maxI int64
	minU, maxU uint64

	cls      class
	f64      []float64
	f32      []float32
	i64      []int64
	u64      []uint64
	c128     []complex128
	fin      []float64
	leftover []byte // a partial group, until the next Add completes it
}

// NewStats starts a summary of a tensor of dtype d.
func NewStats(d safetensors.DType) *Stats {
	return &Stats{DType: d, cls: classOf(d), minF: math.Inf(1), maxF: math.Inf(-1),
		minI: math.MaxInt64, maxI: math.MinInt64, minU: math.MaxUint64}
}

// buffers makes the scratch buffers hold k elements (k <= block): as many
// as the first piece needs, a whole block once a later one needs more. A
// checkpoint of many small tensors (94k in DeepSeek-V3's) would otherwise
// allocate and fault in 20 KiB for each.
func (s *Stats) buffers(k int) {
	if len(s.f64) >= k {
		return
	}
	n := block
	if s.f64 == nil {
		n = k
	}
	s.f64 = make([]float64, n)
	s.fin = make([]float64, n)
	switch s.cls {
	case classFloat:
		s.f32 = make([]float32, n)
	case classSigned:
		s.i64 = make([]int64, n)
	case classUnsigned:
		s.u64 = make([]uint64, n)
	case classComplex:
		s.c128 = make([]complex128, n)
	}
}

// Add summarizes the next bytes of the tensor. Pieces may split an
// element; the bytes of a split one are kept until the next Add.
func (s *Stats) Add(b []byte) {
	g := elemBytes(s.DType)
	if len(s.leftover) > 0 {
		k := min(g-len(s.leftover), len(b))
		s.leftover = append(s.leftover, b[:k]...)
		b = b[k:]
		if len(s.leftover) < g {
			return
		}
		s.add(s.leftover)
		s.leftover = s.leftover[:0]
	}
	whole := len(b) - len(b)%g
	s.add(b[:whole])
	s.leftover = append(s.leftover, b[whole:]...)
}

// add summarizes whole groups.
func (s *Stats) add(b []byte) {
	d := s.DType
	per := d.Bits() // bits per element
	for len(b) > 0 {
		k := min(block, len(b)*8/per) // a multiple of Group: block is
		src := b[:k*per/8]
		b = b[k*per/8:]
		s.Count += uint64(k)
		s.buffers(k)
		switch s.cls {
		case classFloat:
			toFloats(d, s.f64[:k], src, s.f32)
			s.addFloats(s.f64[:k])
		case classSigned:
			toSigned(d, s.i64[:k], src)
			for i, v := range s.i64[:k] {
				s.minI, s.maxI = min(s.minI, v), max(s.maxI, v)
				s.f64[i] = float64(v)
			}
			s.addFloats(s.f64[:k])
		case classUnsigned:
			toUnsigned(d, s.u64[:k], src)
			for i, v := range s.u64[:k] {
				s.minU, s.maxU = min(s.minU, v), max(s.maxU, v)
				s.f64[i] = float64(v)
			}
			s.addFloats(s.f64[:k])
		case classComplex:
			toComplex(s.c128[:k], src)
			for i, z := range s.c128[:k] {
				re, im := real(z), imag(z)
				switch {
				case math.IsNaN(re) || math.IsNaN(im):
					s.f64[i] = math.NaN()
				default:
					s.f64[i] = math.Hypot(re, im) // Inf if a part is
				}
			}
			s.addFloats(s.f64[:k])
		}
	}
}

// addFloats takes a block's values: counts, range, and its moments merged
// into the running ones.
func (s *Stats) addFloats(v []float64) {
	fin := s.fin[:0]
	var nan, inf, zeros uint64
	mn, mx := s.minF, s.maxF
	sum := 0.0
	for _, f := range v {
		if f-f != 0 { // NaN or ±Inf
			if f != f {
				nan++
			} else {
				inf++
			}
			continue
		}
		if f == 0 {
			zeros++
		}
		if f < mn {
			mn = f
		}
		if f > mx {
			mx = f
		}
		sum += f
		fin = append(fin, f)
	}
	s.NaN += nan
	s.Inf += inf
	s.Zeros += zeros
	s.minF, s.maxF = mn, mx
	if len(fin) == 0 {
		return
	}
	nb := float64(len(fin))
	mb := sum / nb
	m2 := 0.0
	for _, f := range fin {
		d := f - mb
		m2 += d * d
	}
	s.merge(uint64(len(fin)), mb, m2)
}

// merge folds in the moments of nb more finite elements (Chan, Golub and
// LeVeque's pairwise update).
func (s *Stats) merge(nb uint64, mb, m2b float64) {
	if s.n == 0 {
		s.n, s.mean, s.m2 = nb, mb, m2b
		return
	}
	na := float64(s.n)
	n := na + float64(nb)
	delta := mb - s.mean
	s.mean += delta * float64(nb) / n
	s.m2 += m2b + delta*delta*na*float64(nb)/n
	s.n += nb
}

// Merge folds in a summary of other elements of the same tensor (or of a
// tensor of the same dtype), as if they had been added to s.
func (s *Stats) Merge(o *Stats) error {
	if o.DType != s.DType {
		return fmt.Errorf("floats: merging %v stats into %v", o.DType, s.DType)
	}
	s.Count += o.Count
	s.NaN += o.NaN
	s.Inf += o.Inf
	s.Zeros += o.Zeros
	s.minF, s.maxF = min(s.minF, o.minF), max(s.maxF, o.maxF)
	s.minI, s.maxI = min(s.minI, o.minI), max(s.maxI, o.maxI)
	s.minU, s.maxU = min(s.minU, o.minU), max(s.maxU, o.maxU)
	if o.n > 0 {
		s.merge(o.n, o.mean, o.m2)
	}
	return nil
}

// Finite is the number of finite elements, over which Min, Max, Mean and
// Std are taken.
func (s *Stats) Finite() uint64 { return s.n }

// Min is the smallest finite element (not Valid if there is none).
func (s *Stats) Min() Number { return s.extreme(s.minF, s.minI, s.minU) }

// Max is the largest finite element.
func (s *Stats) Max() Number { return s.extreme(s.maxF, s.maxI, s.maxU) }

func (s *Stats) extreme(f float64, i int64, u uint64) Number {
	if s.n == 0 {
		return Number{}
	}
	switch s.cls {
	case classSigned:
		return signedNumber(i)
	case classUnsigned:
		return unsignedNumber(u)
	}
	bits := 64
	if s.DType.Bits() <= 32 {
		bits = 32 // an element of F32 or narrower: its shortest float32 form
	}
	return floatNumber(f, bits)
}

// Mean is the mean of the finite elements.
func (s *Stats) Mean() Number {
	if s.n == 0 {
		return Number{}
	}
	return floatNumber(s.mean, 64)
}

// Std is the population standard deviation (numpy's default, ddof=0) of
// the finite elements.
func (s *Stats) Std() Number {
	if s.n == 0 {
		return Number{}
	}
	return floatNumber(math.Sqrt(s.m2/float64(s.n)), 64)
}
