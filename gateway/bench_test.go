package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

func benchToken() *tokenv1.GetTokenResponse {
	now := time.Unix(1700000000, 0)
	return &tokenv1.GetTokenResponse{Token: &tokenv1.Token{
		Id: 23145, Name: "CI Deployments", Status: tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE,
		LastUsedAt: timestamppb.New(now), UsageCount: 12, ExpiresAt: timestamppb.New(now.Add(time.Hour)),
		CreatedAt: timestamppb.New(now), AllowedIps: []string{"10.0.0.0/24", "203.0.113.12"},
	}}
}

// BenchmarkTokenJSON is the REST encoding of a GetToken response: the
// rewrite into the contract's shape and its JSON encoding.
func BenchmarkTokenJSON(b *testing.B) {
	resp := benchToken()
	m := newRESTMarshaler()
	b.ReportAllocs()
	for b.Loop() {
		v, err := rewriteResponse(context.Background(), resp)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.Marshal(v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteProblem(b *testing.B) {
	r := httptest.NewRequest(http.MethodGet, "/api/v1/me/tokens/42", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		writeProblem(w, r, http.StatusNotFound, "Access token not found")
	}
}

func BenchmarkRouteMatch(b *testing.B) {
	rt := newRouter()
	r := httptest.NewRequest(http.MethodGet, "/api/v1/me/tokens/42", nil)
	b.ReportAllocs()
	for b.Loop() {
		// What a request costs: the edge's routeOf, checkBody's resolve.
		if rt.routeOf(r) == "unmatched" || rt.resolve(r.Method, r.URL.Path).route == nil {
			b.Fatal("no route")
		}
	}
}
