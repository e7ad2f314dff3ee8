package formats

import "slices"

// SharedStorages groups the tensors (by index) that share a storage: tied
// weights, or views of one tensor. Groups are in order of their first
// tensor; tensors in a group in index order. Only groups of two or more.
func SharedStorages(ts []Tensor) [][]int {
	byStorage := map[string][]int{}
	var order []string
	for i := range ts {
		s := ts[i].Storage
		if s == "" {
			continue
		}
		if _, ok := byStorage[s]; !ok {
			order = append(order, s)
		}
		byStorage[s] = append(byStorage[s], i)
	}
	var groups [][]int
	for _, s := range order {
		if g := byStorage[s]; len(g) > 1 {
			groups = append(groups, slices.Clip(g))
		}
	}
	return groups
}

// SameView reports whether tensors i and j are the same bytes (the same
// storage, offset, dtype, shape and strides): tied, rather than two views
// of one storage.
func (f *File) SameView(i, j int) bool {
	a, b := &f.Tensors[i], &f.Tensors[j]
	if a.Storage == "" || a.Storage != b.Storage || a.DType != b.DType || a.Type != b.Type || !slices.Equal(a.Shape, b.Shape) {
		return false
	}
	la, lb := &a.data, &b.data
	return la.start == lb.start && la.elem == lb.elem && slices.Equal(la.strides, lb.strides) && la.swap == lb.swap
}
