package gateway

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/tokend/tokend/gateway/gatewaytest"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

func benchToken() *tokenv1.GetTokenResponse {
	return &tokenv1.GetTokenResponse{Token: gatewaytest.ExampleToken()}
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
