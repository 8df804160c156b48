// Package secret mints and checks the bearer secrets of access tokens.
//
// A secret looks like tkd_<32 base62 characters><6 base62 characters>: a
// fixed prefix so secret scanners can recognise a leaked tokend secret, 190
// bits from crypto/rand, and a CRC-32 checksum of everything before it so a
// mistyped or truncated secret is refused without touching the database.
// Only the SHA-256 hash of a secret is ever stored; a secret has far too much
// entropy for a slow password hash to add anything.
package secret

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"hash/crc32"
)

// Prefix starts every tokend secret.
const Prefix = "tkd_"

const (
	alphabet    = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	bodyLen     = 32 // 32 × log2(62) ≈ 190.5 bits of entropy
	checksumLen = 6  // 62^6 > 2^32, so any CRC-32 fits
	// Len is the length of every well-formed secret.
	Len = len(Prefix) + bodyLen + checksumLen
)

// ErrMalformed means a string is not a well-formed tokend secret: wrong
// prefix, length or alphabet, or a checksum that does not match.
var ErrMalformed = errors.New("malformed secret")

// Hash is the SHA-256 of a secret, the only form in which tokend keeps it.
type Hash [sha256.Size]byte

// New mints a fresh secret from crypto/rand.
func New() (string, error) {
	buf := make([]byte, Len)
	copy(buf, Prefix)
	body := buf[len(Prefix) : len(Prefix)+bodyLen]
	// Rejection sampling keeps every character uniform: bytes >= 248 would
	// bias the first 248 mod 62 letters, so they are drawn again.
	var rnd [64]byte
	for i := 0; i < bodyLen; {
		if _, err := rand.Read(rnd[:]); err != nil {
			return "", err
		}
		for _, b := range rnd {
			if b >= 248 {
				continue
			}
			body[i] = alphabet[b%62]
			i++
			if i == bodyLen {
				break
			}
		}
	}
	putChecksum(buf[len(Prefix)+bodyLen:], crcOf(string(buf[:len(Prefix)+bodyLen])))
	return string(buf), nil
}

func putChecksum(dst []byte, sum uint32) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = alphabet[sum%62]
		sum /= 62
	}
}

// Check reports whether s is a well-formed secret with a valid checksum. It
// is cheap and allocation-free, so it runs before any storage lookup.
func Check(s string) error {
	if len(s) != Len || s[:len(Prefix)] != Prefix {
		return ErrMalformed
	}
	for i := len(Prefix); i < Len; i++ {
		if !isAlnum(s[i]) {
			return ErrMalformed
		}
	}
	var want [checksumLen]byte
	putChecksum(want[:], crcOf(s[:len(Prefix)+bodyLen]))
	if string(want[:]) != s[len(Prefix)+bodyLen:] {
		return ErrMalformed
	}
	return nil
}

// crcOf is crc32.ChecksumIEEE over a string without converting it to a
// []byte, which would escape to the heap through crc32's indirect calls.
func crcOf(s string) uint32 {
	tab := crc32.IEEETable
	crc := ^uint32(0)
	for i := 0; i < len(s); i++ {
		crc = tab[byte(crc)^s[i]] ^ (crc >> 8)
	}
	return ^crc
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}

// HashOf returns the SHA-256 of s. Callers check s first.
func HashOf(s string) Hash {
	// Copying into a stack buffer avoids a heap allocation per request for
	// well-formed secrets, which all have length Len.
	if len(s) == Len {
		var buf [Len]byte
		copy(buf[:], s)
		return sha256.Sum256(buf[:])
	}
	return sha256.Sum256([]byte(s))
}
