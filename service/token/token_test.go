package token

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestStatus(t *testing.T) {
	base := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		tok  Token
		now  time.Time
		want Status
	}{
		{"zero times", Token{}, base, StatusActive},
		{"zero times at zero now", Token{}, time.Time{}, StatusActive},
		{"before expiry", Token{ExpiresAt: base}, base.Add(-time.Second), StatusActive},
		{"one nanosecond before expiry", Token{ExpiresAt: base}, base.Add(-time.Nanosecond), StatusActive},
		{"exactly at expiry", Token{ExpiresAt: base}, base, StatusExpired},
		{"exactly at expiry in another zone", Token{ExpiresAt: base}, base.In(time.FixedZone("X", 5*3600)), StatusExpired},
		{"after expiry", Token{ExpiresAt: base}, base.Add(time.Hour), StatusExpired},
		{"revoked, no expiry", Token{RevokedAt: base}, base.Add(-time.Hour), StatusRevoked},
		{"revoked in the future still revoked", Token{RevokedAt: base.Add(time.Hour)}, base, StatusRevoked},
		{"revoked wins over expired", Token{ExpiresAt: base, RevokedAt: base.Add(-time.Hour)}, base.Add(time.Hour), StatusRevoked},
		{"revoked before expiry", Token{ExpiresAt: base.Add(time.Hour), RevokedAt: base}, base, StatusRevoked},
		{"used and counted but active", Token{LastUsedAt: base, UsageCount: 7}, base, StatusActive},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.tok.Status(tt.now); got != tt.want {
				t.Errorf("Status(%v) = %v, want %v", tt.now, got, tt.want)
			}
		})
	}
}

func TestStatusString(t *testing.T) {
	tests := []struct {
		s    Status
		want string
	}{
		{StatusActive, "active"},
		{StatusExpired, "expired"},
		{StatusRevoked, "revoked"},
		{Status(0), "Status(0)"},
		{Status(42), "Status(42)"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.s.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestClock(t *testing.T) {
	in := time.Date(2030, 6, 1, 14, 30, 15, 999_999_999, time.FixedZone("CEST", 2*3600))
	got := Clock(in)
	want := time.Date(2030, 6, 1, 12, 30, 15, 0, time.UTC)
	if !got.Equal(want) || got.Location() != time.UTC || got.Nanosecond() != 0 {
		t.Errorf("Clock(%v) = %v, want %v (UTC, whole seconds)", in, got, want)
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"simple", "ci deploy", false},
		{"single char", "x", false},
		{"leading and trailing spaces", "  ok  ", false},
		{"unicode letters", "Jürgen's 令牌", false},
		{"emoji", "🔑 key", false},
		{"punctuation and symbols", "a-b_c.d/e:f@g#h$%^&*()[]{}<>~`|\\\"'", false},
		{"100 ASCII chars", strings.Repeat("a", 100), false},
		{"101 ASCII chars", strings.Repeat("a", 101), true},
		{"100 two-byte runes", strings.Repeat("é", 100), false},
		{"101 two-byte runes", strings.Repeat("é", 101), true},
		{"100 four-byte runes", strings.Repeat("🔑", 100), false},
		{"101 four-byte runes", strings.Repeat("🔑", 101), true},
		{"empty", "", true},
		{"one space", " ", true},
		{"blank spaces", "     ", true},
		{"newline", "a\nb", true},
		{"only newline", "\n", true},
		{"carriage return", "a\rb", true},
		{"tab", "a\tb", true},
		{"NUL", "a\x00b", true},
		{"DEL", "a\x7fb", true},
		{"escape", "\x1b[31mred", true},
		{"C1 control", "a\u0085b", true},
		{"line separator", "a\u2028b", true},
		{"invalid UTF-8", "abc\xff", true},
		{"truncated rune", "abc\xe2\x82", true},
		{"overlong encoding", "\xc0\xaf", true},
		{"lone surrogate", "\xed\xa0\x80", true},
		{"ZWJ family emoji", "👨\u200d👩\u200d👧", false},
		{"no-break space", "a\u00a0b", false},
		{"bidi override", "x\u202Ey", true},
		{"zero-width space", "x\u200by", true},
		{"only tab", "\t", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateName(tt.in)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("ValidateName(%q) = %v, want error: %v", tt.in, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("ValidateName(%q) = %v, want it to wrap ErrInvalid", tt.in, err)
			}
		})
	}
}

func TestValidateNameMessages(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"", "must not be empty"},
		{"   ", "must not be blank"},
		{strings.Repeat("é", 101), "got 101"},
		{"a\x00", "printable"},
		{"\xff", "UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			err := ValidateName(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ValidateName(%q) = %v, want a message containing %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestValidateUserID(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"simple", "alice", false},
		{"email", "alice.smith+ci@example.com", false},
		{"all allowed punctuation", "a.b_c-d@e+f", false},
		{"digits and capitals", "User42", false},
		{"single char", "a", false},
		{"128 bytes", strings.Repeat("u", MaxUserLen), false},
		{"129 bytes", strings.Repeat("u", MaxUserLen+1), true},
		{"empty", "", true},
		{"space", "alice smith", true},
		{"leading space", " alice", true},
		{"slash", "alice/bob", true},
		{"colon", "alice:bob", true},
		{"percent", "alice%00", true},
		{"NUL", "alice\x00", true},
		{"newline", "alice\n", true},
		{"non-ASCII letter", "jürgen", true},
		{"invalid UTF-8", "alice\xff", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateUserID(tt.in)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("ValidateUserID(%q) = %v, want error: %v", tt.in, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("ValidateUserID(%q) = %v, want it to wrap ErrInvalid", tt.in, err)
			}
		})
	}
}

func TestErrorsAreDistinct(t *testing.T) {
	// The rpc layer maps each to its own status and message: one wrapping
	// another would send, say, a missing user's answer for a missing token.
	errs := []error{ErrNotFound, ErrUserNotFound, ErrInvalid, ErrConflict}
	for i, a := range errs {
		for j, b := range errs {
			if i != j && errors.Is(a, b) {
				t.Errorf("errors.Is(%v, %v) = true, want distinct sentinels", a, b)
			}
		}
	}
}

// TestDetail checks the caller's text of validation errors however they
// arrive: a rule wrapped around ErrInvalid, the same wrapped again, and a
// ValidationError listing several fields, also wrapped.
func TestDetail(t *testing.T) {
	var v Violations
	v.Add("name", ValidateName(""))
	v.Add("user_id", ValidateUserID("a b"))
	for _, tc := range []struct {
		err  error
		want string
	}{
		{ValidateName(""), "name must not be empty"},
		{fmt.Errorf("create: %w", ValidateName("")), "name must not be empty"},
		{v.Err(), "name must not be empty; user may contain only letters, digits and . _ - @ +"},
		{fmt.Errorf("admin: %w", v.Err()), "name must not be empty; user may contain only letters, digits and . _ - @ +"},
	} {
		if got := Detail(tc.err); got != tc.want {
			t.Errorf("Detail(%q) = %q, want %q", tc.err, got, tc.want)
		}
		if !errors.Is(tc.err, ErrInvalid) {
			t.Errorf("%q does not match ErrInvalid", tc.err)
		}
	}
}
