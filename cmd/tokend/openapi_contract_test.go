package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// contractCall sends one REST request through s.send (which checks the
// exchange against the OpenAPI document), with body as JSON unless a
// Content-Type header says otherwise.
func contractCall(t *testing.T, s *testServer, method, path string, body []byte, headers ...string) (*http.Response, []byte) {
	t.Helper()
	contentType := ""
	if body != nil {
		contentType = "application/json"
	}
	var rest []string
	for _, h := range headers {
		if k, v, ok := strings.Cut(h, ": "); ok && strings.EqualFold(k, "Content-Type") {
			contentType = v
			continue
		}
		rest = append(rest, h)
	}
	return s.send(t, method, path, contentType, body, rest...)
}

// TestRESTContractEveryOperation drives every operation of the OpenAPI
// document through its success and documented error answers; each
// exchange is validated against the document by contractCall.
func TestRESTContractEveryOperation(t *testing.T) {
	s := startServer(t, "", "--max-tokens-per-user", "6")
	boot := createToken(t, s.db, "dora", "bootstrap")
	auth := bearer(boot.Secret)

	expect := func(what string, resp *http.Response, body []byte, want int) {
		t.Helper()
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d; body %s", what, resp.StatusCode, want, body)
		}
	}
	dataOf := func(body []byte) map[string]any {
		t.Helper()
		var env struct {
			Data map[string]any `json:"data"`
		}
		if err := json.Unmarshal(body, &env); err != nil || env.Data == nil {
			t.Fatalf("no data object in %s (%v)", body, err)
		}
		return env.Data
	}

	// getCurrentToken
	resp, body := contractCall(t, s, http.MethodGet, "/api/v1/me/tokens/current", nil, auth)
	expect("GET current", resp, body, 200)
	resp, body = contractCall(t, s, http.MethodGet, "/api/v1/me/tokens/current", nil)
	expect("GET current without a token", resp, body, 401)

	// createToken, with idempotent replay and conflict
	const key = "contract-test-key-0001"
	create := []byte(`{"name":"deploy","expires_in_seconds":3600,"allowed_ips":["10.0.0.0/8","2001:db8::/32"]}`)
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", create, auth, "Idempotency-Key: "+key)
	expect("POST create", resp, body, 201)
	created := dataOf(body)
	id := int64(created["id"].(float64))
	if got, want := resp.Header.Get("Location"), tokenPath(id); got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", create, auth, "Idempotency-Key: "+key)
	expect("POST create replay", resp, body, 201)
	if resp.Header.Get("Idempotent-Replayed") != "true" || dataOf(body)["secret"] != created["secret"] {
		t.Errorf("replay: Idempotent-Replayed %q, same secret %v", resp.Header.Get("Idempotent-Replayed"), dataOf(body)["secret"] == created["secret"])
	}
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", []byte(`{"name":"other"}`), auth, "Idempotency-Key: "+key)
	expect("POST create, key reused with another body", resp, body, 409)
	future := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", []byte(`{"name":"dated","expires_at":"`+future+`","allowed_ips":null}`), auth)
	expect("POST create with expires_at", resp, body, 201)
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", []byte(`{"name":"plain"}`), auth, "Content-Type: text/plain")
	expect("POST create as text/plain", resp, body, 415)
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", []byte(`{"name":"`+strings.Repeat("x", 70<<10)+`"}`), auth)
	expect("POST create, body too large", resp, body, 413)
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", []byte(`{"name":"","allowed_ips":["10.0.0.1/24"],"bogus":1}`), auth)
	expect("POST create, invalid fields", resp, body, 400)
	if !bytes.Contains(body, []byte(`"errors":[`)) {
		t.Errorf("400 for invalid fields has no errors member: %s", body)
	}
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", []byte(`{"name":"x"}`))
	expect("POST create without a token", resp, body, 401)

	// listTokens, following the cursor to the end
	cursor, pages := "", 0
	for {
		path := "/api/v1/me/tokens?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		resp, body = contractCall(t, s, http.MethodGet, path, nil, auth)
		expect("GET list", resp, body, 200)
		var page struct {
			NextCursor *string `json:"next_cursor"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		pages++
		if page.NextCursor == nil || pages > 10 {
			break
		}
		cursor = *page.NextCursor
	}
	if pages < 2 {
		t.Errorf("listed %d page(s) of 2 with 3 tokens", pages)
	}
	for _, q := range []string{"", "?status=active", "?status=revoked&limit=100"} {
		resp, body = contractCall(t, s, http.MethodGet, "/api/v1/me/tokens"+q, nil, auth)
		expect("GET list"+q, resp, body, 200)
	}
	for _, q := range []string{"?limit=101", "?limit=x", "?status=bogus", "?cursor=not-a-cursor"} {
		resp, body = contractCall(t, s, http.MethodGet, "/api/v1/me/tokens"+q, nil, auth)
		expect("GET list"+q, resp, body, 400)
	}
	resp, body = contractCall(t, s, http.MethodGet, "/api/v1/me/tokens", nil)
	expect("GET list without a token", resp, body, 401)

	// getToken
	path := tokenPath(id)
	resp, body = contractCall(t, s, http.MethodGet, path, nil, auth)
	expect("GET token", resp, body, 200)

	// updateToken
	resp, body = contractCall(t, s, http.MethodPatch, path, []byte(`{"name":"renamed"}`), auth)
	expect("PATCH name", resp, body, 200)
	resp, body = contractCall(t, s, http.MethodPatch, path, []byte(`{"allowed_ips":null}`), auth)
	expect("PATCH allowed_ips null", resp, body, 200)
	if ips, present := dataOf(body)["allowed_ips"]; !present || ips != nil {
		t.Errorf("after PATCH allowed_ips null: allowed_ips = %v", ips)
	}
	resp, body = contractCall(t, s, http.MethodPatch, path, []byte(`{"name":"both","allowed_ips":["127.0.0.1","192.0.2.0/24"]}`), auth)
	expect("PATCH both", resp, body, 200)
	resp, body = contractCall(t, s, http.MethodPatch, path, []byte(`{}`), auth)
	expect("PATCH nothing", resp, body, 400)
	resp, body = contractCall(t, s, http.MethodPatch, path, []byte(`{"name":"x"}`), auth, "Content-Type: text/plain")
	expect("PATCH as text/plain", resp, body, 415)
	resp, body = contractCall(t, s, http.MethodPatch, "/api/v1/me/tokens/999999", []byte(`{"name":"x"}`), auth)
	expect("PATCH missing token", resp, body, 404)

	// rotateToken, without and with a body
	resp, body = contractCall(t, s, http.MethodPost, path+"/rotate", nil, auth)
	expect("POST rotate", resp, body, 200)
	resp, body = contractCall(t, s, http.MethodPost, path+"/rotate", []byte(`{"grace_period_seconds":60}`), auth)
	expect("POST rotate with grace", resp, body, 200)
	rotated := dataOf(body)
	resp, body = contractCall(t, s, http.MethodGet, "/api/v1/me/tokens/current", nil, bearer(rotated["secret"].(string)))
	expect("GET current with the new secret", resp, body, 200)
	resp, body = contractCall(t, s, http.MethodPost, path+"/rotate", []byte(`{"grace_period_seconds":-1}`), auth)
	expect("POST rotate, negative grace", resp, body, 400)
	resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens/999999/rotate", nil, auth)
	expect("POST rotate missing token", resp, body, 404)

	// revokeToken: 204, idempotent
	resp, body = contractCall(t, s, http.MethodDelete, path, nil, auth)
	expect("DELETE", resp, body, 204)
	resp, body = contractCall(t, s, http.MethodDelete, path, nil, auth)
	expect("DELETE again", resp, body, 204)
	resp, body = contractCall(t, s, http.MethodDelete, "/api/v1/me/tokens/999999", nil, auth)
	expect("DELETE missing token", resp, body, 404)
	resp, body = contractCall(t, s, http.MethodDelete, "/api/v1/me/tokens/abc", nil, auth)
	expect("DELETE bad id", resp, body, 400)

	// the live-token limit is 409
	for i := 0; i < 10; i++ {
		resp, body = contractCall(t, s, http.MethodPost, "/api/v1/me/tokens", []byte(fmt.Sprintf(`{"name":"filler %d"}`, i)), auth)
		if resp.StatusCode != 201 {
			break
		}
	}
	expect("POST create over the live-token limit", resp, body, 409)
}
