// Package tree turns the flat tensor keys of a checkpoint into a directory
// tree, and keeps that tree consistent while a read-write mount creates,
// removes and renames entries. It does no I/O and knows nothing of FUSE.
//
// # From keys to paths
//
// Every tensor key becomes exactly one file; no two tensors share a path. The
// result depends only on the set of keys and the options, never on their
// order. Sep is the key separator ("." unless Options.Sep says otherwise);
// '/' is always a separator as well, because some frameworks (Haiku, Keras)
// put it in their names.
//
// Rule 1, splitting. Separators are found left to right without overlap,
// Sep before '/' where both match. A separator splits the key only where the
// text on both sides of it, up to the neighbouring separators or the ends of
// the key, is non-empty; otherwise it stays part of the name. Empty path
// segments therefore never arise:
//
//	params.Dense_0.kernel                -> params/Dense_0/kernel
//	res_net50/~/initial_conv.w           -> res_net50/~/initial_conv/w
//	dense/kernel:0                       -> dense/kernel:0
//	(Sequential)[0](Linear).w::TrainVar  -> (Sequential)[0](Linear)/w::TrainVar
//	a..b                                 -> a..b
//	.a.b                                 -> .a/b
//	a.b.                                 -> a/b.
//	...                                  -> ...
//
// The pieces between splitting separators are the key's segments; a key's
// segment path is the list of them, whatever separator text stood between.
//
// Rule 2, tensors stay files. A key is never split where the part before
// the separator is itself a tensor: that separator stays in the name, and the
// check repeats with the longer name. Prefixes are compared by segment path,
// so "a/b" and "a.b" are the same prefix. A tensor is thus never both a file
// and a directory (bitsandbytes stores x.weight and x.weight.absmax):
//
//	x.weight                                -> x/weight
//	x.weight.absmax                         -> x/weight.absmax
//	x.weight.quant_state.bitsandbytes__nf4  -> x/weight.quant_state/bitsandbytes__nf4
//
// (x.weight.quant_state is not a tensor here, so the split after it stands;
// had it been one, the last file would be x/weight.quant_state.bitsandbytes__nf4.)
//
// Rule 3, escaping. A name that is not a valid file name is escaped: each NUL
// byte becomes "%00" and each '/' that stayed in a name becomes "%2F"; the
// whole name "" (the empty key) becomes "%", "." becomes "%2E" and ".."
// becomes "%2E%2E". A literal '%' is left alone, so names a user creates look
// the same after a remount; a key that happens to spell an escape (say
// "%2E") is told apart from the escaped one by rule 5.
//
//	.          -> %2E
//	..         -> %2E%2E
//	(empty)    -> %
//	a//b       -> a%2F%2Fb
//	a<NUL>b    -> a%00b
//
// Rule 4, length. A name longer than 255 bytes is cut at a UTF-8 character
// boundary and ends in "~" plus the first 8 hex digits of the SHA-256 of the
// whole escaped name, 255 bytes at most in all:
//
//	w.xxx...x (400 x)  -> w/xxx...x~1a2b3c4d (246 x, then the hash)
//
// Rule 5, collisions. After rules 1-4 two entries of one directory can still
// want the same name: keys with the same segment path ("a.b" and "a/b"), an
// escape and its look-alike, a reserved name in the root directory. Within
// the directory, directories claim their names first, then files, each in
// byte order of their key. An entry whose name is taken, or is reserved,
// gets "~1", "~2", ... appended: the smallest number whose result is not the
// wanted name of any entry of that directory and not yet given out (where
// name and suffix would pass 255 bytes, rule 4 shortens the name before the
// suffix). So no entry loses a name only it wanted, and the result does not
// depend on the order of the keys:
//
//	a.b  a/b                    -> a/b  a/b~1
//	a.b  a/b  a.b~1             -> a/b  a/b~2  a/b~1
//	%2E.x  .                    -> %2E/x  %2E~1
//	__metadata__.x (reserved)   -> __metadata__~1/x
//
// Duplicate keys are handled like "a.b" and "a/b": one file each.
//
// A directory's Key is the key text its path stands for: its parent's Key,
// then the separator and name text of the first key under it (keys sorted by
// segment path, then byte order). With consistent separators this is simply
// the prefix every key under it starts with.
//
// Node IDs are deterministic: the same keys always give the same IDs. The
// root is 0; each directory's children get consecutive IDs in name order,
// and directories are numbered depth first in name order. Nodes added later
// get fresh IDs; IDs are never reused.
//
// # Mutations
//
// A new child of a directory gets the key ChildKey(dir, name), dir.Key + Sep
// + name (just name in the root). So a file created with a name free of
// separators shows up at the same path when the rewritten checkpoint is
// mounted again. (With a multi-byte Sep, a directory whose name ends in part
// of Sep is the exception: rule 1 then reads the joint differently.) Moving
// a directory rewrites the keys of everything below it: the directory's part
// of each key is replaced by the new ChildKey. Renames and removals can
// change what a remount shows where rule 2 or rule 5 decided a name: with
// x.weight renamed, x.weight.absmax is split again, into x/weight/absmax.
package tree
