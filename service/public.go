package service

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
)

// Metadata keys of the public API besides authorization.
const (
	// IdempotencyKeyMetadata carries the client's Idempotency-Key.
	IdempotencyKeyMetadata = "idempotency-key"
	// ReplayedMetadata is set to "true" on the response to a replayed
	// idempotent create.
	ReplayedMetadata = "idempotent-replayed"
)

// errNoPrincipal means a handler that needs a caller ran without one: a
// wiring bug, never the client's fault, so it surfaces as Internal.
var errNoPrincipal = errors.New("handler reached without an authenticated principal")

// TokenService serves tokend.v1.TokenService for the authenticated caller.
type TokenService struct {
	tokenv1.UnimplementedTokenServiceServer
	tokens *Tokens
	now    func() time.Time
}

// NewTokenService returns a TokenService over tokens with clock now.
func NewTokenService(tokens *Tokens, now func() time.Time) *TokenService {
	return &TokenService{tokens: tokens, now: now}
}

func caller(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Principal{}, errNoPrincipal
	}
	return p, nil
}

// changer is caller for a handler that changes tokens: a secret a
// rotation has replaced may read, not change (auth.ErrPreviousSecret). It
// returns the store.Caller the change is asked by, which the store checks
// again when the change commits: the token and its secret then, which
// (being allowed to change) is the token's current one.
func (s *TokenService) changer(ctx context.Context) (auth.Principal, store.Caller, error) {
	p, err := caller(ctx)
	if err != nil {
		return p, store.Caller{}, err
	}
	if err := p.MayChange(); err != nil {
		return p, store.Caller{}, err
	}
	return p, store.Caller{TokenID: p.TokenID, Hash: p.Token.SecretHash, At: s.now()}, nil
}

// GetToken returns one of the caller's tokens.
func (s *TokenService) GetToken(ctx context.Context, req *tokenv1.GetTokenRequest) (*tokenv1.GetTokenResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	var t token.Token
	if req.GetTokenId() == int64(p.TokenID) {
		t, err = s.tokens.Authenticated(p)
	} else {
		t, err = s.tokens.Get(p.UserID, req.GetTokenId())
	}
	if err != nil {
		return nil, err
	}
	return &tokenv1.GetTokenResponse{Token: ToProto(&t, s.now())}, nil
}

// GetCurrentToken returns the token that authenticated the call and its
// owner.
func (s *TokenService) GetCurrentToken(ctx context.Context, _ *tokenv1.GetCurrentTokenRequest) (*tokenv1.GetCurrentTokenResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	t, err := s.tokens.Authenticated(p)
	if err != nil {
		return nil, err
	}
	return &tokenv1.GetCurrentTokenResponse{Token: ToProto(&t, s.now()), UserId: t.UserID}, nil
}

// CreateToken mints a token for the caller.
func (s *TokenService) CreateToken(ctx context.Context, req *tokenv1.CreateTokenRequest) (*tokenv1.CreateTokenResponse, error) {
	p, as, err := s.changer(ctx)
	if err != nil {
		return nil, err
	}
	in := CreateInput{
		As:             as,
		UserID:         p.UserID,
		Name:           req.GetName(),
		ExpiresIn:      seconds(req.GetExpiresInSeconds()),
		ExpiresInField: "expires_in_seconds",
		AllowedIPs:     req.GetAllowedIps(),
	}
	if req.ExpiresAt != nil {
		if err := req.ExpiresAt.CheckValid(); err != nil {
			return nil, violation("expires_at", "expires_at is not a valid timestamp")
		}
		in.ExpiresAt = req.ExpiresAt.AsTime()
		if in.ExpiresAt.IsZero() {
			// 0001-01-01T00:00:00Z: in the past like any other, but the
			// zero time would read as "no expiry" from here on.
			return nil, violation("expires_at", "expires_at must be in the future")
		}
	}
	switch keys := request.FromContext(ctx).Values(ctx, "Idempotency-Key", IdempotencyKeyMetadata); len(keys) {
	case 0:
	case 1:
		if keys[0] == "" {
			// Sent, but empty (an unset variable in a script): refused like
			// any malformed key, not taken for no key, or every retry
			// would create another token.
			var v token.Violations
			v.Add("Idempotency-Key", errIdempotencyKey())
			return nil, v.Err()
		}
		in.IdempotencyKey = keys[0]
	default:
		return nil, violation("Idempotency-Key", "give at most one Idempotency-Key")
	}
	c, err := s.tokens.Create(ctx, in)
	if err != nil {
		return nil, err
	}
	if c.Replayed {
		_ = grpc.SetHeader(ctx, metadata.Pairs(ReplayedMetadata, "true"))
	}
	return &tokenv1.CreateTokenResponse{Token: ToProto(&c.Token, s.now()), Secret: c.Secret}, nil
}

// seconds converts a count of seconds from a request to a Duration,
// saturating instead of overflowing so that huge values fail validation
// as too long rather than wrapping around.
func seconds(n int64) time.Duration {
	switch {
	case n > math.MaxInt64/int64(time.Second):
		return time.Duration(math.MaxInt64)
	case n < math.MinInt64/int64(time.Second):
		return time.Duration(math.MinInt64)
	}
	return time.Duration(n) * time.Second
}

func violation(field, detail string) error {
	return &token.ValidationError{Violations: []token.FieldViolation{{Field: field, Detail: detail}}}
}

// ListTokens lists the caller's tokens, a page at a time.
func (s *TokenService) ListTokens(ctx context.Context, req *tokenv1.ListTokensRequest) (*tokenv1.ListTokensResponse, error) {
	p, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit < 0 {
		limit = math.MaxInt // refused by validation, not read as "all"
	}
	now := s.now() // one time for the status filter and the statuses shown
	ts, next, err := s.tokens.List(ListInput{UserID: p.UserID, Limit: limit, Cursor: req.GetCursor(), Status: req.GetStatus(), Now: now})
	if err != nil {
		return nil, err
	}
	return &tokenv1.ListTokensResponse{Tokens: toProtos(ts, now), NextCursor: next}, nil
}

// UpdateToken changes the fields of a caller's token named in update_mask.
func (s *TokenService) UpdateToken(ctx context.Context, req *tokenv1.UpdateTokenRequest) (*tokenv1.UpdateTokenResponse, error) {
	p, as, err := s.changer(ctx)
	if err != nil {
		return nil, err
	}
	in, err := updateInput(p.UserID, req.GetTokenId(), req.GetToken(), req.GetUpdateMask().GetPaths())
	if err != nil {
		return nil, err
	}
	in.As = as
	t, err := s.tokens.Update(ctx, in)
	if err != nil {
		return nil, err
	}
	return &tokenv1.UpdateTokenResponse{Token: ToProto(&t, s.now())}, nil
}

// updateInput applies an update mask, refusing every path that is not
// updatable. Each is reported at its place in the request
// (update_mask.paths[i]), so the field names no client text; the detail
// quotes the path, escaped.
func updateInput(user string, id int64, u *tokenv1.TokenUpdate, paths []string) (UpdateInput, error) {
	in := UpdateInput{UserID: user, TokenID: id}
	var v token.Violations
	for i, path := range paths {
		switch path {
		case "name":
			name := u.GetName()
			in.Name = &name
		case "allowed_ips":
			ips := u.GetAllowedIps()
			in.AllowedIPs = &ips
		default:
			v.Add(fmt.Sprintf("update_mask.paths[%d]", i),
				fmt.Errorf("%w: %q cannot be updated; only name and allowed_ips can", token.ErrInvalid, path))
		}
	}
	if err := v.Err(); err != nil {
		return UpdateInput{}, err
	}
	return in, nil
}

// RevokeToken revokes one of the caller's tokens.
func (s *TokenService) RevokeToken(ctx context.Context, req *tokenv1.RevokeTokenRequest) (*tokenv1.RevokeTokenResponse, error) {
	p, as, err := s.changer(ctx)
	if err != nil {
		return nil, err
	}
	t, err := s.tokens.Revoke(ctx, as, p.UserID, req.GetTokenId())
	if err != nil {
		return nil, err
	}
	return &tokenv1.RevokeTokenResponse{Token: ToProto(&t, s.now())}, nil
}

// RotateToken gives one of the caller's tokens a new secret.
func (s *TokenService) RotateToken(ctx context.Context, req *tokenv1.RotateTokenRequest) (*tokenv1.RotateTokenResponse, error) {
	p, as, err := s.changer(ctx)
	if err != nil {
		return nil, err
	}
	r, err := s.tokens.Rotate(ctx, as, p.UserID, req.GetTokenId(), seconds(req.GetGracePeriodSeconds()), "grace_period_seconds")
	if err != nil {
		return nil, err
	}
	return &tokenv1.RotateTokenResponse{
		Token:                   ToProto(&r.Token, s.now()),
		Secret:                  r.Secret,
		PreviousSecretExpiresAt: timestamppb.New(r.PreviousUntil),
	}, nil
}
