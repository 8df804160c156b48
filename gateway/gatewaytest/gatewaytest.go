// Package gatewaytest holds the seed contract's example token and a
// channel that answers it at once, so that the benchmarks that put the
// gateway in front of "a service that does nothing" (the gateway's own,
// tokend's allocation budget, and the harness's baseline G) all measure
// it in front of the same answer.
package gatewaytest

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// ExampleJSON is the seed page's example GetToken response, byte for byte
// (235 bytes): what the gateway writes for ExampleToken.
const ExampleJSON = `{"data":{"id":23145,"name":"CI Deployments","status":"active","last_used_at":"2024-04-11T14:35:05Z","usage_count":12,"expires_at":"2024-12-31T06:00:00Z","created_at":"2024-03-01T18:11:00Z","allowed_ips":["10.0.0.0/24","203.0.113.12"]}}`

// ExampleID is the id of the example token.
const ExampleID = 23145

// ExampleToken returns a new copy of the seed page's example token as a
// TokenService message.
func ExampleToken() *tokenv1.Token {
	return &tokenv1.Token{
		Id:         ExampleID,
		Name:       "CI Deployments",
		Status:     tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE,
		LastUsedAt: timestamppb.New(time.Date(2024, 4, 11, 14, 35, 5, 0, time.UTC)),
		UsageCount: 12,
		ExpiresAt:  timestamppb.New(time.Date(2024, 12, 31, 6, 0, 0, 0, time.UTC)),
		CreatedAt:  timestamppb.New(time.Date(2024, 3, 1, 18, 11, 0, 0, time.UTC)),
		AllowedIps: []string{"10.0.0.0/24", "203.0.113.12"},
	}
}

// FixedConn is an in-process channel whose every GetToken answers Token:
// the cheapest service the gateway can sit in front of. Like tokend's
// in-process channel it hands over the response rather than copying it
// (the gateway only reads it), so Token is shared by every call. Other
// methods and streams are Unimplemented.
type FixedConn struct {
	// Token is the answer to every GetToken.
	Token *tokenv1.Token
}

// Invoke answers a GetToken with c.Token.
func (c FixedConn) Invoke(_ context.Context, method string, _, reply any, _ ...grpc.CallOption) error {
	r, ok := reply.(*tokenv1.GetTokenResponse)
	if !ok {
		return status.Errorf(codes.Unimplemented, "%s is not served by FixedConn", method)
	}
	r.Token = c.Token
	return nil
}

// NewStream refuses every stream.
func (FixedConn) NewStream(_ context.Context, _ *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Errorf(codes.Unimplemented, "%s is not served by FixedConn", method)
}
