// Package token is tokend's domain model: what an access token is, how its
// status is derived, and which names, users and IP restrictions are valid.
// It knows nothing of storage or transports.
package token

import (
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// Errors that the rest of tokend maps to transport codes with errors.Is.
var (
	// ErrNotFound means the token does not exist or belongs to someone else;
	// the two are deliberately indistinguishable to callers.
	ErrNotFound = errors.New("token not found")
	// ErrUserNotFound means the user owns no tokens, so tokend has never
	// heard of them.
	ErrUserNotFound = errors.New("unknown user")
	// ErrInvalid marks input that breaks a validation rule; the wrapping
	// error's text says which rule, in words fit for the caller.
	ErrInvalid = errors.New("invalid input")
	// ErrConflict means a valid request conflicts with the current state:
	// the user's live-token limit is reached, an idempotency key was reused
	// for a different request, or a revoked or expired token was rotated.
	ErrConflict = errors.New("conflict")
)

// Limits on user input.
const (
	// MaxNameLen is the longest token name, in characters.
	MaxNameLen = 100
	// MaxUserLen is the longest user id, in bytes.
	MaxUserLen = 128
	// MaxAllowedIPs is the most entries an allowed_ips list may hold.
	MaxAllowedIPs = 64
)

// Status is the operational status of a token.
type Status int

// The statuses a token can have, in the order they are checked: revocation
// wins over expiry.
const (
	StatusActive Status = iota + 1
	StatusExpired
	StatusRevoked
)

// String returns the status as the REST API spells it.
func (s Status) String() string {
	switch s {
	case StatusActive:
		return "active"
	case StatusExpired:
		return "expired"
	case StatusRevoked:
		return "revoked"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Token is an access token as tokend stores it. The secret itself is never
// held, only its SHA-256 hash. Times are UTC with whole seconds; a zero time
// means "never" (never used, never expires, not revoked).
type Token struct {
	ID         uint64
	UserID     string
	Name       string
	SecretHash [32]byte
	// PrevSecretHash is the hash of the secret before the last rotation,
	// still accepted until PrevSecretUntil (the rotation's grace period).
	PrevSecretHash  [32]byte
	PrevSecretUntil time.Time
	CreatedAt       time.Time
	ExpiresAt       time.Time
	RevokedAt       time.Time
	LastUsedAt      time.Time
	UsageCount      uint64
	// UsageBatch is the number of the last usage batch written into this
	// record (see package usage); it lets readers merge in-memory counts
	// without counting a batch twice.
	UsageBatch uint64
	AllowedIPs AllowedIPs
}

// Status derives the token's status at now: revoked if it was revoked,
// else expired if its expiry is at or before now, else active.
func (t *Token) Status(now time.Time) Status {
	switch {
	case !t.RevokedAt.IsZero():
		return StatusRevoked
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		return StatusExpired
	}
	return StatusActive
}

// Clock truncates t to the whole seconds in UTC that tokend stores and shows.
func Clock(t time.Time) time.Time {
	return t.UTC().Truncate(time.Second)
}

// ValidateName checks a token name: 1 to MaxNameLen characters of printable
// text, not just spaces. Printable means Unicode graphic characters (letters,
// marks, numbers, punctuation, symbols and spaces) plus the zero-width
// joiner that composed emoji need; control and other format characters,
// such as bidi overrides that make a name display as something else, are
// refused.
func ValidateName(name string) error {
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: name must be valid UTF-8", ErrInvalid)
	}
	n := utf8.RuneCountInString(name)
	if n == 0 {
		return fmt.Errorf("%w: name must not be empty", ErrInvalid)
	}
	if n > MaxNameLen {
		return fmt.Errorf("%w: name must be at most %d characters, got %d", ErrInvalid, MaxNameLen, n)
	}
	blank := true
	for _, r := range name {
		if !unicode.IsGraphic(r) && r != '\u200d' {
			return fmt.Errorf("%w: name must contain only printable characters", ErrInvalid)
		}
		if !unicode.IsSpace(r) && r != '\u200d' {
			blank = false
		}
	}
	if blank {
		return fmt.Errorf("%w: name must not be blank", ErrInvalid)
	}
	return nil
}

// ValidateUserID checks a user id: 1 to MaxUserLen bytes of ASCII letters,
// digits and the punctuation that e-mail addresses and usernames use.
func ValidateUserID(user string) error {
	if user == "" {
		return fmt.Errorf("%w: user must not be empty", ErrInvalid)
	}
	if len(user) > MaxUserLen {
		return fmt.Errorf("%w: user must be at most %d bytes", ErrInvalid, MaxUserLen)
	}
	for i := 0; i < len(user); i++ {
		c := user[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '-', c == '@', c == '+':
		default:
			return fmt.Errorf("%w: user may contain only letters, digits and . _ - @ +", ErrInvalid)
		}
	}
	return nil
}
