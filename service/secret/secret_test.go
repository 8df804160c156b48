package secret

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func TestLen(t *testing.T) {
	if Len != 42 {
		t.Errorf("Len = %d, want 42 (4 prefix + 32 body + 6 checksum)", Len)
	}
	if Prefix != "tkd_" {
		t.Errorf("Prefix = %q, want %q", Prefix, "tkd_")
	}
}

func TestNew(t *testing.T) {
	const draws = 1000
	seen := make(map[string]bool, draws)
	for i := 0; i < draws; i++ {
		s, err := New()
		if err != nil {
			t.Fatalf("New() = %v", err)
		}
		if len(s) != Len {
			t.Fatalf("New() = %q: length %d, want %d", s, len(s), Len)
		}
		if !strings.HasPrefix(s, Prefix) {
			t.Fatalf("New() = %q: want prefix %q", s, Prefix)
		}
		if i := strings.IndexFunc(s[len(Prefix):], func(r rune) bool { return !strings.ContainsRune(base62, r) }); i >= 0 {
			t.Fatalf("New() = %q: character %q at %d is not base62", s, s[len(Prefix)+i], len(Prefix)+i)
		}
		if err := Check(s); err != nil {
			t.Fatalf("Check(New()) = Check(%q) = %v, want nil", s, err)
		}
		if seen[s] {
			t.Fatalf("New() returned %q twice in %d draws", s, i+1)
		}
		seen[s] = true
	}
}

// TestNewDistribution is a loose sanity check that the body characters are
// spread over the whole alphabet: with 32000 body characters each of the 62
// should appear about 516 times. The bounds are many standard deviations
// wide (sd ≈ 22.5), so this fails only for a grossly biased generator, such
// as one that reduces bytes mod 62 without rejection (which skews the
// first 8 characters up by about a quarter) or uses only part of the alphabet.
func TestNewDistribution(t *testing.T) {
	const draws = 1000
	var counts [256]int
	for i := 0; i < draws; i++ {
		s, err := New()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []byte(s[len(Prefix) : len(Prefix)+32]) {
			counts[c]++
		}
	}
	const n = draws * 32
	mean := float64(n) / 62
	lo, hi := int(mean*0.75), int(mean*1.25)
	for _, c := range []byte(base62) {
		if counts[c] < lo || counts[c] > hi {
			t.Errorf("character %q appeared %d times in %d, want within [%d, %d]", c, counts[c], n, lo, hi)
		}
	}
}

func TestCheck(t *testing.T) {
	valid := mustNew(t)
	body := valid[len(Prefix):]
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"prefix only", Prefix},
		{"truncated by one", valid[:Len-1]},
		{"truncated to body", valid[:len(Prefix)+32]},
		{"extra char", valid + "0"},
		{"trailing newline", valid + "\n"},
		{"leading space", " " + valid[:Len-1]},
		{"no prefix, same length", "xxxx" + body},
		{"upper-case prefix", "TKD_" + body},
		{"other prefix", "ghp_" + body},
		{"dash instead of underscore", "tkd-" + body},
		{"prefix moved", body[:4] + Prefix + body[4:]}, // full length: only the prefix check can refuse it
		{"underscore in body", valid[:10] + "_" + valid[11:]},
		{"dash in body", valid[:10] + "-" + valid[11:]},
		{"space in body", valid[:10] + " " + valid[11:]},
		{"NUL in body", valid[:10] + "\x00" + valid[11:]},
		{"high byte in body", valid[:10] + "\xff" + valid[11:]},
		{"dash in checksum", valid[:Len-1] + "-"},
		{"multi-byte rune at same byte length", valid[:Len-2] + "é"},
		{"all zeros", Prefix + strings.Repeat("0", Len-len(Prefix))},
		{"body reversed", Prefix + reverse(body)},
		{"two secrets' halves", valid[:20] + mustNew(t)[20:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Check(tt.in); !errors.Is(err, ErrMalformed) {
				t.Errorf("Check(%q) = %v, want ErrMalformed", tt.in, err)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		if err := Check(valid); err != nil {
			t.Errorf("Check(%q) = %v, want nil", valid, err)
		}
	})
}

// TestCheckKnownAnswer pins the format: a secret minted by hand from the
// documented recipe (CRC-32 IEEE of prefix and body, six big-endian base62
// digits) must pass, so a change of checksum or alphabet is caught.
func TestCheckKnownAnswer(t *testing.T) {
	body := "0123456789ABCDEFGHIJKLMNOPQRSTUV"
	// crc32.ChecksumIEEE([]byte("tkd_" + body)), in base62.
	s := Prefix + body + checksumBase62(Prefix+body)
	if err := Check(s); err != nil {
		t.Errorf("Check(%q) = %v, want nil", s, err)
	}
}

// TestCheckCatchesEverySubstitution replaces each character after the
// prefix, one at a time, by every other base62 character: the checksum must
// reject all of them.
func TestCheckCatchesEverySubstitution(t *testing.T) {
	for range 5 {
		valid := mustNew(t)
		b := []byte(valid)
		for pos := len(Prefix); pos < Len; pos++ {
			orig := b[pos]
			for _, c := range []byte(base62) {
				if c == orig {
					continue
				}
				b[pos] = c
				if err := Check(string(b)); !errors.Is(err, ErrMalformed) {
					t.Errorf("Check(%q) (position %d %q -> %q in %q) = %v, want ErrMalformed", b, pos, orig, c, valid, err)
				}
			}
			b[pos] = orig
		}
		if err := Check(string(b)); err != nil {
			t.Fatalf("Check(%q) = %v after restoring it", b, err)
		}
	}
}

// TestCheckCatchesAdjacentSwaps: a transposition of two different
// neighbouring characters is a common typo.
func TestCheckCatchesAdjacentSwaps(t *testing.T) {
	valid := mustNew(t)
	b := []byte(valid)
	for pos := len(Prefix); pos < Len-1; pos++ {
		if b[pos] == b[pos+1] {
			continue
		}
		b[pos], b[pos+1] = b[pos+1], b[pos]
		if err := Check(string(b)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Check(%q) (swap at %d of %q) = %v, want ErrMalformed", b, pos, valid, err)
		}
		b[pos], b[pos+1] = b[pos+1], b[pos]
	}
}

func TestCheckAllocatesNothing(t *testing.T) {
	valid := mustNew(t)
	bad := valid[:Len-1] + "-"
	wrongSum := valid[:len(Prefix)] + "A" + valid[len(Prefix)+1:]
	if wrongSum == valid {
		wrongSum = valid[:len(Prefix)] + "B" + valid[len(Prefix)+1:]
	}
	for name, s := range map[string]string{"valid": valid, "bad char": bad, "bad checksum": wrongSum, "short": "tkd_"} {
		t.Run(name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(100, func() { _ = Check(s) })
			if allocs != 0 {
				t.Errorf("Check(%q) allocates %v times per run, want 0", s, allocs)
			}
		})
	}
}

func TestHashOf(t *testing.T) {
	for _, s := range []string{"", "tkd_", mustNew(t), mustNew(t), "\x00\xff"} {
		if got, want := HashOf(s), Hash(sha256.Sum256([]byte(s))); got != want {
			t.Errorf("HashOf(%q) = %x, want %x", s, got, want)
		}
	}
	// Known answer: SHA-256("abc").
	const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := HashOf("abc"); hexString(got[:]) != abc {
		t.Errorf("HashOf(\"abc\") = %x, want %s", got, abc)
	}
	a, b := mustNew(t), mustNew(t)
	if HashOf(a) == HashOf(b) {
		t.Errorf("HashOf(%q) == HashOf(%q)", a, b)
	}
}

func FuzzCheck(f *testing.F) {
	f.Add("")
	f.Add(Prefix)
	f.Add(Prefix + "0123456789ABCDEFGHIJKLMNOPQRSTUV" + "000000")
	f.Add(Prefix + "0123456789ABCDEFGHIJKLMNOPQRSTUV" + checksumBase62(Prefix+"0123456789ABCDEFGHIJKLMNOPQRSTUV"))
	f.Add("TKD_0123456789ABCDEFGHIJKLMNOPQRSTUVzzzzzz")
	f.Add("tkd_\xff\xfe0123456789ABCDEFGHIJKLMNOPQRSTzzzzzz")
	for range 4 {
		s, err := New()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := Check(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Check(%q) = %v, want nil or ErrMalformed", s, err)
			}
			return
		}
		if len(s) != Len {
			t.Fatalf("Check(%q) = nil but its length is %d, want %d", s, len(s), Len)
		}
		if !strings.HasPrefix(s, Prefix) {
			t.Fatalf("Check(%q) = nil but it lacks prefix %q", s, Prefix)
		}
		for i := len(Prefix); i < Len; i++ {
			if !strings.ContainsRune(base62, rune(s[i])) {
				t.Fatalf("Check(%q) = nil but byte %d (%q) is not base62", s, i, s[i])
			}
		}
		if want := checksumBase62(s[:Len-6]); s[Len-6:] != want {
			t.Fatalf("Check(%q) = nil but the checksum should be %q", s, want)
		}
	})
}

func BenchmarkCheck(b *testing.B) {
	s := mustNew(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := Check(s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHashOf(b *testing.B) {
	s := mustNew(b)
	b.ReportAllocs()
	for b.Loop() {
		_ = HashOf(s)
	}
}

func BenchmarkNew(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(); err != nil {
			b.Fatal(err)
		}
	}
}

func mustNew(t testing.TB) string {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	return s
}

// checksumBase62 is an independent implementation of the checksum: the
// CRC-32 (IEEE) of s as six big-endian base62 digits.
func checksumBase62(s string) string {
	// Bitwise CRC-32 IEEE, so the test does not share hash/crc32's table.
	crc := ^uint32(0)
	for i := 0; i < len(s); i++ {
		crc ^= uint32(s[i])
		for range 8 {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0xedb88320
			} else {
				crc >>= 1
			}
		}
	}
	crc = ^crc
	out := make([]byte, 6)
	for i := 5; i >= 0; i-- {
		out[i] = base62[crc%62]
		crc /= 62
	}
	return string(out)
}

func reverse(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
