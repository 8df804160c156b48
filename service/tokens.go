// Package service implements tokend's RPCs: the public TokenService, served
// over gRPC and (through the gateway) REST, and the local AdminService that
// the `tokend token` commands use. Both are thin adapters over Tokens, which
// holds the rules. Handlers return domain errors; the rpc package maps them
// to gRPC status codes in one place.
package service

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// Limits are the operator's bounds on what users may ask for.
type Limits struct {
	// MaxLifetime is the longest a token may be created to live; zero
	// means no bound (tokens may also never expire, regardless).
	MaxLifetime time.Duration
	// MaxLivePerUser is how many active tokens one user may hold; zero
	// means no bound.
	MaxLivePerUser int
	// MaxRotationGrace is the longest grace period a rotation may ask for
	// (a longer one is refused); zero allows none.
	MaxRotationGrace time.Duration
}

// DefaultLimits are the limits of a server started without flags.
func DefaultLimits() Limits {
	return Limits{MaxLifetime: 365 * 24 * time.Hour, MaxLivePerUser: 100, MaxRotationGrace: 24 * time.Hour}
}

// Fixed bounds of the API.
const (
	// IdempotencyWindow is how long an Idempotency-Key is remembered.
	IdempotencyWindow = 24 * time.Hour
	// DefaultPageSize and MaxPageSize bound ListTokens pages.
	DefaultPageSize = 20
	MaxPageSize     = 100
	// Idempotency keys must be long enough to be unguessable (they also
	// key the encryption of the secret kept for retries): a UUID fits.
	minIdempotencyKeyLen = 16
	maxIdempotencyKeyLen = 255
)

// Tokens holds the rules of the token lifecycle, for any user; callers
// decide which user (the authenticated one, or the admin's choice).
type Tokens struct {
	store  *store.Store
	usage  *usage.Recorder
	limits Limits
	now    func() time.Time
}

// NewTokens returns the lifecycle rules over st. Tokens read from st are
// shown with the uses that rec holds but has not yet written; rec may be
// nil where nothing is counted (the CLI on the file).
func NewTokens(st *store.Store, rec *usage.Recorder, limits Limits, now func() time.Time) *Tokens {
	return &Tokens{store: st, usage: rec, limits: limits, now: now}
}

// written runs write, which changes a token and returns it as committed,
// and adds the uses not yet on disk to the result. Unlike fresh it never
// runs write twice: if a usage flush commits meanwhile, it reads the token
// again instead.
//
// It returns when ctx ends even if the write has not: a write waits for
// the store's writer lock, which a hung disk can hold forever, and the
// call's deadline (capped by the server) must still end the call. The
// write then finishes, or not, on its own; the caller cannot know which,
// as with any timed-out request. Writes are rare beside reads, so the
// goroutine this costs does not show.
func (s *Tokens) written(ctx context.Context, write func() (token.Token, error)) (token.Token, error) {
	type result struct {
		t   token.Token
		err error
	}
	done := make(chan result, 1)
	go func() {
		t, err := s.writeThenFresh(write)
		done <- result{t, callerError(err)}
	}()
	select {
	case r := <-done:
		if ri := request.FromContext(ctx); ri != nil && errors.Is(r.err, auth.ErrInvalidToken) {
			ri.Failure = r.err.Error() // for the log line, as authentication does
		}
		return r.t, r.err
	case <-ctx.Done():
		return token.Token{}, ctx.Err()
	}
}

// callerError turns the failed re-check of a write's caller (see
// store.Caller) into the error authentication gives that credential now:
// a secret a rotation replaced may not change tokens, and a revoked or
// expired token is no credential.
func callerError(err error) error {
	switch {
	case errors.Is(err, store.ErrCallerRotated):
		return fmt.Errorf("%w (rotated while this request ran)", auth.ErrPreviousSecret)
	case errors.Is(err, store.ErrCallerInvalid):
		return fmt.Errorf("%w: revoked or expired while this request ran", auth.ErrInvalidToken)
	}
	return err
}

func (s *Tokens) writeThenFresh(write func() (token.Token, error)) (token.Token, error) {
	if s.usage == nil {
		return write()
	}
	gen := s.usage.Gen()
	t, err := write()
	if err != nil || s.usage.ApplySince(&t, gen) {
		return t, err
	}
	return s.fresh(func() (token.Token, error) { return s.store.GetForUser(t.UserID, t.ID) })
}

// fresh runs read, which must only read, and returns its token with the
// uses not yet on disk added, so every read sees every use already made.
// It may run read more than once.
func (s *Tokens) fresh(read func() (token.Token, error)) (token.Token, error) {
	var t token.Token
	if s.usage == nil {
		return read()
	}
	err := s.usage.Fresh(func() ([]*token.Token, error) {
		var err error
		t, err = read()
		return []*token.Token{&t}, err
	})
	return t, err
}

// CreateInput describes a token to mint.
type CreateInput struct {
	UserID     string
	Name       string
	ExpiresAt  time.Time     // zero: unset
	ExpiresIn  time.Duration // zero: unset
	AllowedIPs []string
	// ExpiresInField names the duration field in violations, as the caller's
	// API spells it ("expires_in_seconds", "--expires-in").
	ExpiresInField string
	// IdempotencyKey, if not empty, makes the create safe to retry.
	IdempotencyKey string
	// As is who asks (see store.Caller): the zero Caller for the
	// administrator.
	As store.Caller
}

// Created is the result of Create.
type Created struct {
	Token  token.Token
	Secret string
	// Replayed is true when this answers a retry of an earlier create.
	Replayed bool
}

// ValidateCreate checks in against limits at now and returns the token it
// describes, without id or secret. Every invalid field is reported. With
// zero limits it checks only what does not depend on the server's
// configuration, which is what the CLI does before touching any file.
func ValidateCreate(in CreateInput, limits Limits, now time.Time) (token.Token, error) {
	var v token.Violations
	v.Add("user", token.ValidateUserID(in.UserID))
	v.Add("name", token.ValidateName(in.Name))
	ips, err := token.ParseAllowedIPs(in.AllowedIPs)
	v.Add("allowed_ips", err)
	field := in.ExpiresInField
	if field == "" {
		field = "expires_in"
	}
	t := token.Token{UserID: in.UserID, Name: in.Name, CreatedAt: token.Clock(now), AllowedIPs: ips}
	switch {
	case !in.ExpiresAt.IsZero() && in.ExpiresIn != 0:
		v.Add("expires_at", fmt.Errorf("%w: set expires_at or %s, not both", token.ErrInvalid, field))
	case !in.ExpiresAt.IsZero():
		t.ExpiresAt = token.Clock(in.ExpiresAt)
		if !t.ExpiresAt.After(now) {
			v.Add("expires_at", fmt.Errorf("%w: expires_at must be in the future", token.ErrInvalid))
		} else if limits.MaxLifetime > 0 && t.ExpiresAt.Sub(now) > limits.MaxLifetime {
			v.Add("expires_at", fmt.Errorf("%w: expires_at must be at most %s from now", token.ErrInvalid, limits.MaxLifetime))
		}
	case in.ExpiresIn != 0:
		switch {
		case in.ExpiresIn < time.Second:
			v.Add(field, fmt.Errorf("%w: %s must be at least one second", token.ErrInvalid, field))
		case limits.MaxLifetime > 0 && in.ExpiresIn > limits.MaxLifetime:
			v.Add(field, fmt.Errorf("%w: %s must be at most %s", token.ErrInvalid, field, limits.MaxLifetime))
		default:
			t.ExpiresAt = ceilSecond(now.Add(in.ExpiresIn))
		}
	}
	if k := in.IdempotencyKey; k != "" && !validIdempotencyKey(k) {
		v.Add("Idempotency-Key", errIdempotencyKey())
	}
	return t, v.Err()
}

// errIdempotencyKey is the violation of an Idempotency-Key that is not
// one: empty, too short or long, or not printable ASCII.
func errIdempotencyKey() error {
	return fmt.Errorf("%w: Idempotency-Key must be %d to %d printable ASCII characters, such as a UUID",
		token.ErrInvalid, minIdempotencyKeyLen, maxIdempotencyKeyLen)
}

func validIdempotencyKey(k string) bool {
	if len(k) < minIdempotencyKeyLen || len(k) > maxIdempotencyKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// ceilSecond rounds t up to a whole second, so that a lifetime or grace
// period is never cut short by the store's one-second resolution.
func ceilSecond(t time.Time) time.Time {
	c := token.Clock(t)
	if c.Before(t) {
		c = c.Add(time.Second)
	}
	return c
}

// Create validates in and mints a token; only the secret's hash is stored.
func (s *Tokens) Create(ctx context.Context, in CreateInput) (Created, error) {
	now := s.now()
	t, err := ValidateCreate(in, s.limits, now)
	if err != nil {
		return Created{}, err
	}
	sec, err := secret.New()
	if err != nil {
		return Created{}, fmt.Errorf("mint secret: %w", err)
	}
	t.SecretHash = secret.HashOf(sec)
	opts := store.CreateOptions{Now: now, MaxLive: s.limits.MaxLivePerUser}
	if in.IdempotencyKey != "" {
		sealed, err := secret.Seal(sec, in.IdempotencyKey, in.UserID)
		if err != nil {
			return Created{}, fmt.Errorf("seal secret: %w", err)
		}
		opts.Idempotency = &store.Idempotency{
			Key:         sha256.Sum256([]byte("tokend idempotency\x00" + in.UserID + "\x00" + in.IdempotencyKey)),
			Fingerprint: fingerprint(in),
			Sealed:      sealed,
			Window:      IdempotencyWindow,
		}
	}
	var replay *store.Replay
	t, err = s.written(ctx, func() (token.Token, error) {
		created, r, err := s.store.As(in.As).Create(t, opts)
		replay = r
		return created, err
	})
	if err != nil {
		return Created{}, err
	}
	if replay != nil {
		sec, err = secret.Open(replay.Sealed, in.IdempotencyKey, in.UserID)
		if err != nil {
			return Created{}, fmt.Errorf("replay idempotent create: %w", err)
		}
		// A retry after the token was rotated would hand back a secret that
		// is no longer the token's (at most still in a grace period).
		if secret.HashOf(sec) != t.SecretHash {
			return Created{}, fmt.Errorf("%w: the token this Idempotency-Key created (id %d) has been rotated since; its first secret no longer works", token.ErrConflict, t.ID)
		}
		return Created{Token: t, Secret: sec, Replayed: true}, nil
	}
	return Created{Token: t, Secret: sec}, nil
}

// fingerprint identifies what a create asked for, so a reused idempotency
// key with a different request is caught.
func fingerprint(in CreateInput) [32]byte {
	b, _ := json.Marshal(struct {
		Name       string
		ExpiresAt  int64
		ExpiresIn  time.Duration
		AllowedIPs []string
	}{in.Name, in.ExpiresAt.Unix(), in.ExpiresIn, in.AllowedIPs})
	return sha256.Sum256(b)
}

// Authenticated returns the token that authenticated p's request, reusing
// the copy authentication read when no usage flush has committed since, so
// a token reading itself costs no second read.
func (s *Tokens) Authenticated(p auth.Principal) (token.Token, error) {
	if s.usage != nil && p.Token.ID == p.TokenID {
		t := p.Token
		if s.usage.ApplySince(&t, p.UsageGen) {
			return t, nil
		}
	}
	return s.Get(p.UserID, int64(p.TokenID))
}

// Get returns user's token id.
func (s *Tokens) Get(user string, id int64) (token.Token, error) {
	uid, err := tokenID(id)
	if err != nil {
		return token.Token{}, err
	}
	return s.fresh(func() (token.Token, error) { return s.store.GetForUser(user, uid) })
}

// ListInput selects a page of a user's tokens.
type ListInput struct {
	UserID string
	Limit  int    // 0: DefaultPageSize; -1: all (admin only)
	Cursor string // from the previous page
	Status string // "", "active", "expired" or "revoked"
	// Now is the time statuses are judged at, for the filter; zero means
	// the clock's now. A caller that shows statuses passes the time it
	// shows them at, so a token expiring meanwhile cannot be listed under
	// ?status=active showing "expired".
	Now time.Time
}

// List returns a page of in.UserID's tokens, newest first, and the cursor
// of the next page ("" on the last).
func (s *Tokens) List(in ListInput) ([]token.Token, string, error) {
	var v token.Violations
	limit := in.Limit
	switch {
	case limit == 0:
		limit = DefaultPageSize
	case limit == -1:
		limit = 0
	case limit < 1 || limit > MaxPageSize:
		v.Add("limit", fmt.Errorf("%w: limit must be between 1 and %d", token.ErrInvalid, MaxPageSize))
	}
	before, err := decodeCursor(in.Cursor)
	v.Add("cursor", err)
	var keep func(*token.Token) bool
	var live bool
	now := in.Now
	if now.IsZero() {
		now = s.now()
	}
	if in.Status != "" {
		want, ok := parseStatus(in.Status)
		if !ok {
			v.Add("status", fmt.Errorf("%w: status must be active, expired or revoked", token.ErrInvalid))
		}
		keep = func(t *token.Token) bool { return t.Status(now) == want }
		// Active tokens are all in the live index: a CI user's thousands
		// of past tokens are not read to list the few it holds.
		live = want == token.StatusActive
	}
	if err := v.Err(); err != nil {
		return nil, "", err
	}
	var ts []token.Token
	var next uint64
	read := func() ([]*token.Token, error) {
		var err error
		ts, next, err = s.store.ListPage(in.UserID, store.Page{Before: before, Limit: limit, Keep: keep, Live: live})
		ptrs := make([]*token.Token, len(ts))
		for i := range ts {
			ptrs[i] = &ts[i]
		}
		return ptrs, err
	}
	if s.usage != nil {
		err = s.usage.Fresh(read)
	} else {
		_, err = read()
	}
	if err != nil {
		return nil, "", err
	}
	return ts, encodeCursor(next), nil
}

func parseStatus(s string) (token.Status, bool) {
	for _, st := range []token.Status{token.StatusActive, token.StatusExpired, token.StatusRevoked} {
		if s == st.String() {
			return st, true
		}
	}
	return 0, false
}

// Cursors are opaque to clients: a version tag and the id to continue
// below, base64url-encoded.
const cursorTag = "c1"

func encodeCursor(id uint64) string {
	if id == 0 {
		return ""
	}
	b := make([]byte, len(cursorTag)+8)
	copy(b, cursorTag)
	binary.BigEndian.PutUint64(b[len(cursorTag):], id)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(c string) (uint64, error) {
	if c == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) != len(cursorTag)+8 || string(b[:len(cursorTag)]) != cursorTag {
		return 0, fmt.Errorf("%w: cursor is not one this server issued", token.ErrInvalid)
	}
	id := binary.BigEndian.Uint64(b[len(cursorTag):])
	if id == 0 {
		return 0, fmt.Errorf("%w: cursor is not one this server issued", token.ErrInvalid)
	}
	return id, nil
}

// UpdateInput changes a token; nil fields stay as they are.
type UpdateInput struct {
	UserID  string
	TokenID int64
	Name    *string
	// AllowedIPs replaces the restriction; an empty list removes it.
	AllowedIPs *[]string
	// As is who asks (see store.Caller).
	As store.Caller
}

// Update changes a token's name and/or allowed IPs.
func (s *Tokens) Update(ctx context.Context, in UpdateInput) (token.Token, error) {
	id, err := tokenID(in.TokenID)
	if err != nil {
		return token.Token{}, err
	}
	var v token.Violations
	if in.Name == nil && in.AllowedIPs == nil {
		v.Add("update_mask", fmt.Errorf("%w: nothing to update: give name and/or allowed_ips", token.ErrInvalid))
	}
	if in.Name != nil {
		v.Add("name", token.ValidateName(*in.Name))
	}
	var ips token.AllowedIPs
	if in.AllowedIPs != nil {
		ips, err = token.ParseAllowedIPs(*in.AllowedIPs)
		v.Add("allowed_ips", err)
	}
	if err := v.Err(); err != nil {
		return token.Token{}, err
	}
	return s.written(ctx, func() (token.Token, error) {
		return s.store.As(in.As).Mutate(in.UserID, id, func(t *token.Token) error {
			if in.Name != nil {
				t.Name = *in.Name
			}
			if in.AllowedIPs != nil {
				t.AllowedIPs = ips
			}
			return nil
		})
	})
}

// Revoke revokes user's token id, asked by as (see store.Caller);
// revoking twice is not an error.
func (s *Tokens) Revoke(ctx context.Context, as store.Caller, user string, id int64) (token.Token, error) {
	uid, err := tokenID(id)
	if err != nil {
		return token.Token{}, err
	}
	return s.written(ctx, func() (token.Token, error) { return s.store.As(as).Revoke(user, uid, s.now()) })
}

// Rotated is the result of Rotate.
type Rotated struct {
	Token  token.Token
	Secret string
	// PreviousUntil is when the old secret stops working.
	PreviousUntil time.Time
}

// Rotate gives user's token id a new secret, asked by as (see
// store.Caller). The old one keeps working for reads for grace, so clients
// can roll over; a grace beyond the limits' MaxRotationGrace is refused.
// Revoked and expired tokens cannot be rotated.
func (s *Tokens) Rotate(ctx context.Context, as store.Caller, user string, id int64, grace time.Duration, graceField string) (Rotated, error) {
	uid, err := tokenID(id)
	if err != nil {
		return Rotated{}, err
	}
	var v token.Violations
	if grace < 0 {
		v.Add(graceField, fmt.Errorf("%w: %s must not be negative", token.ErrInvalid, graceField))
	} else if grace > s.limits.MaxRotationGrace {
		v.Add(graceField, fmt.Errorf("%w: %s must be at most %s", token.ErrInvalid, graceField, s.limits.MaxRotationGrace))
	}
	if err := v.Err(); err != nil {
		return Rotated{}, err
	}
	sec, err := secret.New()
	if err != nil {
		return Rotated{}, fmt.Errorf("mint secret: %w", err)
	}
	now := s.now()
	until := token.Clock(now)
	if grace > 0 {
		until = ceilSecond(now.Add(grace))
	}
	rotate := rotateFunc(now, until, grace, sec)
	t, err := s.written(ctx, func() (token.Token, error) { return s.store.As(as).Mutate(user, uid, rotate) })
	if err != nil {
		return Rotated{}, err
	}
	return Rotated{Token: t, Secret: sec, PreviousUntil: until}, nil
}

// rotateFunc is Rotate's change to the token, as a function for Mutate.
func rotateFunc(now, until time.Time, grace time.Duration, sec string) func(*token.Token) error {
	return func(t *token.Token) error {
		if st := t.Status(now); st != token.StatusActive {
			return fmt.Errorf("%w: a %s token cannot be rotated", token.ErrConflict, st)
		}
		if grace > 0 {
			t.PrevSecretHash, t.PrevSecretUntil = t.SecretHash, until
		} else {
			t.PrevSecretHash, t.PrevSecretUntil = [32]byte{}, time.Time{}
		}
		t.SecretHash = secret.HashOf(sec)
		return nil
	}
}

func tokenID(id int64) (uint64, error) {
	if id <= 0 {
		// No field list: over REST the id is a path segment, not a field,
		// and a malformed one ("abc") is refused by the gateway alike.
		return 0, fmt.Errorf("%w: token id must be a positive integer", token.ErrInvalid)
	}
	return uint64(id), nil
}
