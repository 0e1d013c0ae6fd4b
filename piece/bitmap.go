package piece

import "math/bits"

// Bitmap is a set of piece numbers; bit n is byte n/8, bit n%8 (LSB first),
// the wire format of schedulerv1.Parent.bitmap. The zero value is empty.
// It is not safe for concurrent use.
type Bitmap []byte

// Set adds piece n, growing the bitmap as needed.
func (b *Bitmap) Set(n int) {
	if n < 0 {
		return
	}
	for len(*b) <= n/8 {
		*b = append(*b, 0)
	}
	(*b)[n/8] |= 1 << (n % 8)
}

// Clear removes piece n.
func (b Bitmap) Clear(n int) {
	if n >= 0 && n/8 < len(b) {
		b[n/8] &^= 1 << (n % 8)
	}
}

// Has reports whether piece n is set.
func (b Bitmap) Has(n int) bool {
	return n >= 0 && n/8 < len(b) && b[n/8]&(1<<(n%8)) != 0
}

// Count returns the number of set pieces.
func (b Bitmap) Count() int {
	c := 0
	for _, x := range b {
		c += bits.OnesCount8(x)
	}
	return c
}

// CountMissingFrom returns how many pieces b holds that other lacks.
func (b Bitmap) CountMissingFrom(other Bitmap) int {
	c := 0
	for i, x := range b {
		var o byte
		if i < len(other) {
			o = other[i]
		}
		c += bits.OnesCount8(x &^ o)
	}
	return c
}

// Full reports whether pieces 0..count-1 are all set.
func (b Bitmap) Full(count int) bool {
	if count <= 0 {
		return true
	}
	for i := 0; i < count/8; i++ {
		if i >= len(b) || b[i] != 0xff {
			return false
		}
	}
	if r := count % 8; r != 0 {
		i := count / 8
		mask := byte(1<<r) - 1
		return i < len(b) && b[i]&mask == mask
	}
	return true
}

// Clone returns a copy.
func (b Bitmap) Clone() Bitmap { return append(Bitmap(nil), b...) }
