package service

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/token"
)

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

func toProtos(ts []token.Token, now time.Time) []*tokenv1.Token {
	out := make([]*tokenv1.Token, len(ts))
	for i := range ts {
		out[i] = ToProto(&ts[i], now)
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
