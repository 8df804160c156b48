package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

func rewriteJSON(t *testing.T, m proto.Message) string {
	t.Helper()
	v, err := rewriteResponse(context.Background(), m)
	if err != nil {
		t.Fatalf("rewriteResponse(%T) = %v", m, err)
	}
	// The gateway's marshaler, as the server uses it.
	b, err := newRESTMarshaler().Marshal(v)
	if err != nil {
		t.Fatalf("Marshal = %v", err)
	}
	return string(b)
}

func TestRewriteResponseUnsetFields(t *testing.T) {
	created := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	got := rewriteJSON(t, &tokenv1.GetTokenResponse{Token: &tokenv1.Token{
		Id:        7,
		Name:      "ci",
		Status:    tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE,
		CreatedAt: timestamppb.New(created),
	}})
	want := `{"data":{"id":7,"name":"ci","status":"active","last_used_at":null,"usage_count":0,"expires_at":null,"created_at":"2030-06-01T12:00:00Z","allowed_ips":null}}`
	if got != want {
		t.Errorf("JSON =\n%s\nwant\n%s", got, want)
	}
	var m struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"last_used_at", "expires_at", "allowed_ips"} {
		if v, ok := m.Data[k]; !ok || string(v) != "null" {
			t.Errorf("%s = %s (present %v), want an explicit null", k, v, ok)
		}
	}
	for _, k := range []string{"id", "usage_count"} {
		var n json.Number
		dec := json.NewDecoder(bytes.NewReader(m.Data[k]))
		dec.UseNumber()
		if err := dec.Decode(&n); err != nil {
			t.Errorf("%s = %s, want a JSON number: %v", k, m.Data[k], err)
		}
	}
}

func TestRewriteResponseSetFields(t *testing.T) {
	cest := time.FixedZone("CEST", 2*3600)
	got := rewriteJSON(t, &tokenv1.GetTokenResponse{Token: &tokenv1.Token{
		Id:         math.MaxInt64,
		Name:       "deploy \"prod\" ✓",
		Status:     tokenv1.TokenStatus_TOKEN_STATUS_REVOKED,
		LastUsedAt: timestamppb.New(time.Date(2030, 6, 1, 14, 30, 15, 999_999_999, cest)),
		UsageCount: math.MaxInt64,
		ExpiresAt:  timestamppb.New(time.Date(2031, 1, 1, 0, 59, 59, 1, cest)),
		CreatedAt:  timestamppb.New(time.Date(1969, 12, 31, 23, 59, 59, 500_000_000, time.UTC)),
		AllowedIps: []string{"203.0.113.0/24", "2001:db8::1"},
	}})
	want := `{"data":{"id":9223372036854775807,"name":"deploy \"prod\" ✓","status":"revoked",` +
		`"last_used_at":"2030-06-01T12:30:15Z","usage_count":9223372036854775807,` +
		`"expires_at":"2030-12-31T22:59:59Z","created_at":"1969-12-31T23:59:59Z",` +
		`"allowed_ips":["203.0.113.0/24","2001:db8::1"]}}`
	if got != want {
		t.Errorf("JSON =\n%s\nwant\n%s", got, want)
	}
}

func TestRewriteResponseEmptyAllowedIPs(t *testing.T) {
	got := rewriteJSON(t, &tokenv1.GetTokenResponse{Token: &tokenv1.Token{
		Id: 1, CreatedAt: timestamppb.New(time.Unix(0, 0)), AllowedIps: []string{},
	}})
	want := `{"data":{"id":1,"name":"","status":"unspecified","last_used_at":null,"usage_count":0,"expires_at":null,"created_at":"1970-01-01T00:00:00Z","allowed_ips":null}}`
	if got != want {
		t.Errorf("JSON =\n%s\nwant\n%s", got, want)
	}
}

func TestStatusJSON(t *testing.T) {
	tests := []struct {
		in   tokenv1.TokenStatus
		want string
	}{
		{tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE, "active"},
		{tokenv1.TokenStatus_TOKEN_STATUS_EXPIRED, "expired"},
		{tokenv1.TokenStatus_TOKEN_STATUS_REVOKED, "revoked"},
		{tokenv1.TokenStatus_TOKEN_STATUS_UNSPECIFIED, "unspecified"},
		{tokenv1.TokenStatus(99), "unspecified"},
	}
	for _, tt := range tests {
		if got := statusJSON(tt.in); got != tt.want {
			t.Errorf("statusJSON(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRewriteResponseUnknownMessage(t *testing.T) {
	for _, m := range []proto.Message{&emptypb.Empty{}, &tokenv1.Token{}, &tokenv1.GetTokenRequest{TokenId: 1}} {
		v, err := rewriteResponse(context.Background(), m)
		if err == nil {
			t.Errorf("rewriteResponse(%T) = %v, nil; want an error", m, v)
		}
	}
}
