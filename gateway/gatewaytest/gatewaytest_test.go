package gatewaytest_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokend/tokend/gateway"
	"github.com/tokend/tokend/gateway/gatewaytest"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// The gateway in front of FixedConn answers the seed's example byte for
// byte, so a baseline built from them returns what the contract shows.
func TestGatewayServesExampleJSON(t *testing.T) {
	if len(gatewaytest.ExampleJSON) != 235 {
		t.Errorf("ExampleJSON is %d bytes, the seed's example is 235", len(gatewaytest.ExampleJSON))
	}
	if !json.Valid([]byte(gatewaytest.ExampleJSON)) {
		t.Fatal("ExampleJSON is not JSON")
	}
	h, err := gateway.New(context.Background(), gateway.Options{
		Conn:   gatewaytest.FixedConn{Token: gatewaytest.ExampleToken()},
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/api/v1/me/tokens/23145", nil)
	r.Header.Set("Authorization", "Bearer unused")
	h.ServeHTTP(w, r)
	if w.Code != http.StatusOK || w.Body.String() != gatewaytest.ExampleJSON {
		t.Errorf("GET: %d %s\nwant 200 %s", w.Code, w.Body, gatewaytest.ExampleJSON)
	}
}

func TestFixedConnRefusesOtherMethods(t *testing.T) {
	c := gatewaytest.FixedConn{Token: gatewaytest.ExampleToken()}
	err := c.Invoke(context.Background(), tokenv1.TokenService_ListTokens_FullMethodName, nil, &tokenv1.ListTokensResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("Invoke(ListTokens) = %v, want Unimplemented", err)
	}
	if _, err := c.NewStream(context.Background(), nil, "/x/y"); status.Code(err) != codes.Unimplemented {
		t.Errorf("NewStream = %v, want Unimplemented", err)
	}
}
