package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthProbes(t *testing.T) {
	ready := errors.New("disk on fire")
	var readyErr error
	h, err := New(context.Background(), Options{
		Conn:   &fakeConn{err: errors.New("probes must not call the service")},
		Logger: slog.New(slog.DiscardHandler),
		Ready:  func(context.Context) error { return readyErr },
	})
	if err != nil {
		t.Fatal(err)
	}
	get := func(method, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		rec := get(http.MethodGet, path)
		var body map[string]string
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &body) != nil || body["status"] != "ok" {
			t.Errorf("GET %s without a token = %d %s, want 200 {\"status\":\"ok\"}", path, rec.Code, rec.Body)
		}
		if rec := get(http.MethodPost, path); rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Content-Type") != ProblemContentType {
			t.Errorf("POST %s = %d %q, want a 405 problem", path, rec.Code, rec.Header().Get("Content-Type"))
		}
	}
	readyErr = ready
	if rec := get(http.MethodGet, "/readyz"); rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Content-Type") != ProblemContentType {
		t.Errorf("GET /readyz when not ready = %d %q, want a 503 problem", rec.Code, rec.Header().Get("Content-Type"))
	} else if strings.Contains(rec.Body.String(), "fire") {
		t.Errorf("the 503 leaks the cause: %s", rec.Body)
	}
	if rec := get(http.MethodGet, "/healthz"); rec.Code != http.StatusOK {
		t.Errorf("GET /healthz when not ready = %d, want 200 (alive is not ready)", rec.Code)
	}
}
