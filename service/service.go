// Package service implements tokend's RPCs: the public TokenService, served
// over gRPC and (through the gateway) REST, and the local AdminService that
// the `tokend token` commands use. Handlers return domain errors; the rpc
// package maps them to gRPC status codes in one place.
package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tokend/tokend/gen/tokend/admin/v1"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
)

// errNoPrincipal means a handler that needs a caller ran without one: a
// wiring bug, never the client's fault, so it surfaces as Internal.
var errNoPrincipal = errors.New("handler reached without an authenticated principal")

// TokenService serves tokend.v1.TokenService for the authenticated caller.
type TokenService struct {
	tokenv1.UnimplementedTokenServiceServer
	store *store.Store
	now   func() time.Time
}

// NewTokenService returns a TokenService reading from st with clock now.
func NewTokenService(st *store.Store, now func() time.Time) *TokenService {
	return &TokenService{store: st, now: now}
}

// GetToken returns one of the caller's tokens.
func (s *TokenService) GetToken(ctx context.Context, req *tokenv1.GetTokenRequest) (*tokenv1.GetTokenResponse, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return nil, errNoPrincipal
	}
	id, err := tokenID(req.GetTokenId())
	if err != nil {
		return nil, err
	}
	t, err := s.store.GetForUser(p.UserID, id)
	if err != nil {
		return nil, err
	}
	return &tokenv1.GetTokenResponse{Token: ToProto(&t, s.now())}, nil
}

func tokenID(id int64) (uint64, error) {
	if id <= 0 {
		return 0, fmt.Errorf("%w: token id must be a positive integer", token.ErrInvalid)
	}
	return uint64(id), nil
}

// ToProto converts a stored token to its API form, deriving its status at
// now.
func ToProto(t *token.Token, now time.Time) *tokenv1.Token {
	out := &tokenv1.Token{
		Id:         int64(t.ID),
		Name:       t.Name,
		Status:     statusProto(t.Status(now)),
		UsageCount: int64(t.UsageCount),
		CreatedAt:  timestamppb.New(t.CreatedAt),
		AllowedIps: t.AllowedIPs.Strings(),
	}
	if !t.LastUsedAt.IsZero() {
		out.LastUsedAt = timestamppb.New(t.LastUsedAt)
	}
	if !t.ExpiresAt.IsZero() {
		out.ExpiresAt = timestamppb.New(t.ExpiresAt)
	}
	return out
}

func statusProto(s token.Status) tokenv1.TokenStatus {
	switch s {
	case token.StatusActive:
		return tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE
	case token.StatusExpired:
		return tokenv1.TokenStatus_TOKEN_STATUS_EXPIRED
	case token.StatusRevoked:
		return tokenv1.TokenStatus_TOKEN_STATUS_REVOKED
	}
	return tokenv1.TokenStatus_TOKEN_STATUS_UNSPECIFIED
}

// AdminService serves tokend.admin.v1.AdminService. It trusts its caller
// completely, so it is only ever reachable on the owner-only unix socket or
// in-process from the CLI.
type AdminService struct {
	adminv1.UnimplementedAdminServiceServer
	store *store.Store
	now   func() time.Time
}

// NewAdminService returns an AdminService writing to st with clock now.
func NewAdminService(st *store.Store, now func() time.Time) *AdminService {
	return &AdminService{store: st, now: now}
}

// CreateToken validates the request, mints a secret and stores only its
// hash. Nothing is written if any field is invalid.
func (s *AdminService) CreateToken(_ context.Context, req *adminv1.CreateTokenRequest) (*adminv1.CreateTokenResponse, error) {
	now := s.now()
	t, err := NewToken(req, now)
	if err != nil {
		return nil, err
	}
	sec, err := secret.New()
	if err != nil {
		return nil, fmt.Errorf("mint secret: %w", err)
	}
	t.SecretHash = secret.HashOf(sec)
	t, err = s.store.Create(t)
	if err != nil {
		return nil, err
	}
	return &adminv1.CreateTokenResponse{Token: ToProto(&t, now), Secret: sec}, nil
}

// NewToken validates a create request and returns the token it describes,
// without id or secret. The CLI calls it before touching any file, so bad
// input writes nothing, not even an empty database.
func NewToken(req *adminv1.CreateTokenRequest, now time.Time) (token.Token, error) {
	if err := token.ValidateUserID(req.GetUserId()); err != nil {
		return token.Token{}, err
	}
	if err := token.ValidateName(req.GetName()); err != nil {
		return token.Token{}, err
	}
	ips, err := token.ParseAllowedIPs(req.GetAllowedIps())
	if err != nil {
		return token.Token{}, err
	}
	t := token.Token{
		UserID:     req.GetUserId(),
		Name:       req.GetName(),
		CreatedAt:  token.Clock(now),
		AllowedIPs: ips,
	}
	if req.ExpiresIn != nil {
		if err := req.ExpiresIn.CheckValid(); err != nil {
			return token.Token{}, fmt.Errorf("%w: expires_in is not a valid duration", token.ErrInvalid)
		}
		d := req.ExpiresIn.AsDuration()
		if d < time.Second {
			return token.Token{}, fmt.Errorf("%w: expires_in must be at least one second", token.ErrInvalid)
		}
		if d > token.MaxLifetime {
			return token.Token{}, fmt.Errorf("%w: expires_in must be at most %s", token.ErrInvalid, token.MaxLifetime)
		}
		t.ExpiresAt = token.Clock(now.Add(d))
	}
	return t, nil
}

// RevokeToken revokes one of a user's tokens; it is idempotent.
func (s *AdminService) RevokeToken(_ context.Context, req *adminv1.RevokeTokenRequest) (*adminv1.RevokeTokenResponse, error) {
	if err := token.ValidateUserID(req.GetUserId()); err != nil {
		return nil, err
	}
	id, err := tokenID(req.GetTokenId())
	if err != nil {
		return nil, err
	}
	now := s.now()
	t, err := s.store.Revoke(req.GetUserId(), id, now)
	if err != nil {
		return nil, err
	}
	return &adminv1.RevokeTokenResponse{Token: ToProto(&t, now)}, nil
}

// ListTokens lists a user's tokens, newest first.
func (s *AdminService) ListTokens(_ context.Context, req *adminv1.ListTokensRequest) (*adminv1.ListTokensResponse, error) {
	if err := token.ValidateUserID(req.GetUserId()); err != nil {
		return nil, err
	}
	ts, err := s.store.List(req.GetUserId())
	if err != nil {
		return nil, err
	}
	now := s.now()
	out := &adminv1.ListTokensResponse{Tokens: make([]*tokenv1.Token, len(ts))}
	for i := range ts {
		out.Tokens[i] = ToProto(&ts[i], now)
	}
	return out, nil
}
