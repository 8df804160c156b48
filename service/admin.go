package service

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tokend/tokend/gen/tokend/admin/v1"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
)

// AdminService serves tokend.admin.v1.AdminService. It trusts its caller
// completely, so it is only ever reachable on the owner-only unix socket or
// in-process from the CLI.
type AdminService struct {
	adminv1.UnimplementedAdminServiceServer
	tokens *Tokens
	now    func() time.Time
}

// NewAdminService returns an AdminService over tokens with clock now.
func NewAdminService(tokens *Tokens, now func() time.Time) *AdminService {
	return &AdminService{tokens: tokens, now: now}
}

// AdminCreateInput converts an admin create request; the CLI validates it
// with ValidateCreate before opening anything.
func AdminCreateInput(req *adminv1.CreateTokenRequest) CreateInput {
	in := CreateInput{
		UserID:         req.GetUserId(),
		Name:           req.GetName(),
		AllowedIPs:     req.GetAllowedIps(),
		ExpiresInField: "expires_in",
	}
	if req.ExpiresIn != nil {
		in.ExpiresIn = req.ExpiresIn.AsDuration()
		if in.ExpiresIn == 0 || req.ExpiresIn.CheckValid() != nil {
			in.ExpiresIn = -1 // refused as not positive, rather than read as unset
		}
	}
	return in
}

func checkUser(user string) error {
	var v token.Violations
	v.Add("user", token.ValidateUserID(user))
	return v.Err()
}

// CreateToken mints a token for a user.
func (s *AdminService) CreateToken(ctx context.Context, req *adminv1.CreateTokenRequest) (*adminv1.CreateTokenResponse, error) {
	c, err := s.tokens.Create(ctx, AdminCreateInput(req))
	if err != nil {
		return nil, err
	}
	return &adminv1.CreateTokenResponse{Token: ToProto(&c.Token, s.now()), Secret: c.Secret}, nil
}

// RevokeToken revokes one of a user's tokens; it is idempotent.
func (s *AdminService) RevokeToken(ctx context.Context, req *adminv1.RevokeTokenRequest) (*adminv1.RevokeTokenResponse, error) {
	if err := checkUser(req.GetUserId()); err != nil {
		return nil, err
	}
	t, err := s.tokens.Revoke(ctx, store.Caller{}, req.GetUserId(), req.GetTokenId())
	if err != nil {
		return nil, err
	}
	return &adminv1.RevokeTokenResponse{Token: ToProto(&t, s.now())}, nil
}

// ListTokens lists all of a user's tokens, newest first.
func (s *AdminService) ListTokens(_ context.Context, req *adminv1.ListTokensRequest) (*adminv1.ListTokensResponse, error) {
	if err := checkUser(req.GetUserId()); err != nil {
		return nil, err
	}
	ts, _, err := s.tokens.List(ListInput{UserID: req.GetUserId(), Limit: -1})
	if err != nil {
		return nil, err
	}
	return &adminv1.ListTokensResponse{Tokens: toProtos(ts, s.now())}, nil
}

// GetToken returns one of a user's tokens.
func (s *AdminService) GetToken(_ context.Context, req *adminv1.GetTokenRequest) (*adminv1.GetTokenResponse, error) {
	if err := checkUser(req.GetUserId()); err != nil {
		return nil, err
	}
	t, err := s.tokens.Get(req.GetUserId(), req.GetTokenId())
	if err != nil {
		return nil, err
	}
	return &adminv1.GetTokenResponse{Token: ToProto(&t, s.now())}, nil
}

// UpdateToken changes a user's token.
func (s *AdminService) UpdateToken(ctx context.Context, req *adminv1.UpdateTokenRequest) (*adminv1.UpdateTokenResponse, error) {
	if err := checkUser(req.GetUserId()); err != nil {
		return nil, err
	}
	in, err := updateInput(req.GetUserId(), req.GetTokenId(), req.GetToken(), req.GetUpdateMask().GetPaths())
	if err != nil {
		return nil, err
	}
	t, err := s.tokens.Update(ctx, in)
	if err != nil {
		return nil, err
	}
	return &adminv1.UpdateTokenResponse{Token: ToProto(&t, s.now())}, nil
}

// RotateToken gives a user's token a new secret.
func (s *AdminService) RotateToken(ctx context.Context, req *adminv1.RotateTokenRequest) (*adminv1.RotateTokenResponse, error) {
	if err := checkUser(req.GetUserId()); err != nil {
		return nil, err
	}
	r, err := s.tokens.Rotate(ctx, store.Caller{}, req.GetUserId(), req.GetTokenId(), seconds(req.GetGracePeriodSeconds()), "grace-period")
	if err != nil {
		return nil, err
	}
	return &adminv1.RotateTokenResponse{
		Token:                   ToProto(&r.Token, s.now()),
		Secret:                  r.Secret,
		PreviousSecretExpiresAt: timestamppb.New(r.PreviousUntil),
	}, nil
}
