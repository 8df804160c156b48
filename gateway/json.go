package gateway

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// The published REST contract wants JSON numbers for int64 fields, status
// as a lowercase word and explicit nulls, none of which protojson produces.
// So every response message is rewritten into a plain struct whose JSON is
// exactly the contract's.

// Token is the JSON form of a token in the REST API.
type Token struct {
	ID         int64    `json:"id"`
	Name       string   `json:"name"`
	Status     string   `json:"status"`
	LastUsedAt *string  `json:"last_used_at"`
	UsageCount int64    `json:"usage_count"`
	ExpiresAt  *string  `json:"expires_at"`
	CreatedAt  string   `json:"created_at"`
	AllowedIPs []string `json:"allowed_ips"`
}

// envelope wraps every successful response body, as the contract does.
type envelope[T any] struct {
	Data T `json:"data"`
}

// TokenJSON converts an API token to its REST JSON form. The CLI's --json
// output uses it too, so both speak the same shape.
func TokenJSON(t *tokenv1.Token) Token {
	out := Token{
		ID:         t.GetId(),
		Name:       t.GetName(),
		Status:     statusJSON(t.GetStatus()),
		UsageCount: t.GetUsageCount(),
		CreatedAt:  timeJSON(t.GetCreatedAt()),
		AllowedIPs: t.GetAllowedIps(),
	}
	if len(out.AllowedIPs) == 0 {
		out.AllowedIPs = nil // unrestricted is null, never []
	}
	if ts := t.GetLastUsedAt(); ts != nil {
		s := timeJSON(ts)
		out.LastUsedAt = &s
	}
	if ts := t.GetExpiresAt(); ts != nil {
		s := timeJSON(ts)
		out.ExpiresAt = &s
	}
	return out
}

func statusJSON(s tokenv1.TokenStatus) string {
	switch s {
	case tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE:
		return "active"
	case tokenv1.TokenStatus_TOKEN_STATUS_EXPIRED:
		return "expired"
	case tokenv1.TokenStatus_TOKEN_STATUS_REVOKED:
		return "revoked"
	}
	return "unspecified"
}

// timeJSON formats a timestamp as RFC 3339 in UTC with whole seconds, like
// "2024-04-11T14:35:05Z".
// An unset timestamp is the epoch (AsTime's reading of nil).
func timeJSON(ts *timestamppb.Timestamp) string {
	return string(appendRFC3339(nil, ts))
}

// appendRFC3339 is timeJSON appending to b. The layout has no fractional
// seconds, so none are printed.
func appendRFC3339(b []byte, ts *timestamppb.Timestamp) []byte {
	return ts.AsTime().UTC().AppendFormat(b, time.RFC3339)
}

// createdToken is a new token with its secret.
type createdToken struct {
	Token
	Secret string `json:"secret"`
}

// rotatedToken is a token with its new secret.
type rotatedToken struct {
	Token
	Secret                  string `json:"secret"`
	PreviousSecretExpiresAt string `json:"previous_secret_expires_at"`
}

// tokenList is a page of tokens; NextCursor is null on the last page.
type tokenList struct {
	Data       []Token `json:"data"`
	NextCursor *string `json:"next_cursor"`
}

// rewriteResponse maps each RPC response to its REST body.
func rewriteResponse(_ context.Context, resp proto.Message) (any, error) {
	switch m := resp.(type) {
	case *tokenv1.GetTokenResponse:
		return tokenEnvelope(m.GetToken()), nil
	case *tokenv1.GetCurrentTokenResponse:
		return tokenEnvelope(m.GetToken()), nil
	case *tokenv1.UpdateTokenResponse:
		return tokenEnvelope(m.GetToken()), nil
	case *tokenv1.CreateTokenResponse:
		return envelope[createdToken]{Data: createdToken{Token: TokenJSON(m.GetToken()), Secret: m.GetSecret()}}, nil
	case *tokenv1.RotateTokenResponse:
		return envelope[rotatedToken]{Data: rotatedToken{
			Token:                   TokenJSON(m.GetToken()),
			Secret:                  m.GetSecret(),
			PreviousSecretExpiresAt: timeJSON(m.GetPreviousSecretExpiresAt()),
		}}, nil
	case *tokenv1.ListTokensResponse:
		out := tokenList{Data: make([]Token, len(m.GetTokens()))}
		for i, t := range m.GetTokens() {
			out.Data[i] = TokenJSON(t)
		}
		if c := m.GetNextCursor(); c != "" {
			out.NextCursor = &c
		}
		return out, nil
	case *tokenv1.RevokeTokenResponse:
		return nil, nil // 204: forwardResponse already wrote the status
	}
	// A new RPC without a REST shape is a programming error; failing loudly
	// beats leaking protojson's shape into the API.
	return nil, fmt.Errorf("no REST representation for %T", resp)
}
