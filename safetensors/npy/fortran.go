package npy

import "fmt"

// ParseAnyOrder is Parse that also accepts fortran_order arrays whose
// layout differs from C order (np.save of k.T or np.asfortranarray(k)):
// Info.Fortran is then true and NeedsReorder says the data must go through
// ToCOrder before it is stored as C order, which safetensors requires.
func ParseAnyOrder(prefix []byte) (*Info, error) {
	return parse(prefix, true)
}

// NeedsReorder reports whether the data is in Fortran order and its bytes
// differ from the C-order bytes of the same array.
func (i *Info) NeedsReorder() bool {
	return i.Fortran && !layoutsAgree(i.Shape)
}

// ToCOrder returns the C-order bytes of the array whose Fortran-order bytes
// are data: elemSize bytes per element, shape as the header gives it (the
// array's own shape, not the reversed one). Element (i0, ..., in-1) sits at
// i0 + d0*(i1 + d1*(i2 + ...)) in Fortran order and at
// ((i0*d1 + i1)*d2 + ...) in C order. data must hold exactly the array.
func ToCOrder(data []byte, shape []uint64, elemSize int) ([]byte, error) {
	n, ok := byteSize(shape, uint64(elemSize))
	if !ok || n != uint64(len(data)) {
		return nil, fmt.Errorf("npy: %d bytes of data, but shape %v of %d-byte elements needs %d", len(data), shape, elemSize, n)
	}
	out := make([]byte, len(data))
	if len(data) == 0 || len(shape) == 0 {
		copy(out, data)
		return out, nil
	}
	k := len(shape)
	// Source strides (bytes) of each axis in Fortran order.
	stride := make([]int, k)
	stride[0] = elemSize
	for a := 1; a < k; a++ {
		stride[a] = stride[a-1] * int(shape[a-1])
	}
	// Walk the destination in C order: the last axis fastest, an odometer
	// over the others keeping the source offset of the row's start.
	last := int(shape[k-1])
	step := stride[k-1]
	idx := make([]uint64, k-1)
	src, dst := 0, 0
	for {
		for j, s := 0, src; j < last; j, s = j+1, s+step {
			copy(out[dst:dst+elemSize], data[s:s+elemSize])
			dst += elemSize
		}
		a := k - 2
		for ; a >= 0; a-- {
			idx[a]++
			src += stride[a]
			if idx[a] < shape[a] {
				break
			}
			src -= stride[a] * int(shape[a])
			idx[a] = 0
		}
		if a < 0 {
			return out, nil
		}
	}
}
