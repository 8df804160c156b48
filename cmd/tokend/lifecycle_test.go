package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// End-to-end tests of the token lifecycle over REST: create, list, update,
// revoke, rotate and the current token, against a real server.

const jsonType = "application/json"

// tokenKeys are the members of every token object in the REST API.
var tokenKeys = []string{"allowed_ips", "created_at", "expires_at", "id", "last_used_at", "name", "status", "usage_count"}

// withTokenKeys returns tokenKeys plus extra, sorted.
func withTokenKeys(extra ...string) []string {
	keys := slices.Concat(tokenKeys, extra)
	slices.Sort(keys)
	return keys
}

var secretPattern = regexp.MustCompile(`^tkd_[0-9A-Za-z]{38}$`)

// dataOf checks that body is {"data": {...}} whose object has exactly
// keys, and returns that object.
func dataOf(t *testing.T, body []byte, keys []string) map[string]any {
	t.Helper()
	top := decodeObject(t, body)
	if got := sortedKeys(top); !slices.Equal(got, []string{"data"}) {
		t.Fatalf("top-level keys = %v, want [data]; body %s", got, body)
	}
	data, ok := top["data"].(map[string]any)
	if !ok {
		t.Fatalf("data is %T, want an object; body %s", top["data"], body)
	}
	if got := sortedKeys(data); !slices.Equal(got, keys) {
		t.Errorf("data keys = %v, want %v", got, keys)
	}
	return data
}

// idOf returns m's id, which must be a JSON number.
func idOf(t *testing.T, m map[string]any) int64 {
	t.Helper()
	n, ok := m["id"].(json.Number)
	if !ok {
		t.Fatalf("id = %#v, want a JSON number", m["id"])
	}
	id, err := n.Int64()
	if err != nil || id <= 0 {
		t.Fatalf("id = %v, want a positive integer", n)
	}
	return id
}

func numberOf(t *testing.T, m map[string]any, key string) int64 {
	t.Helper()
	n, ok := m[key].(json.Number)
	if !ok {
		t.Fatalf("%s = %#v, want a JSON number", key, m[key])
	}
	v, err := n.Int64()
	if err != nil {
		t.Fatalf("%s = %v: %v", key, n, err)
	}
	return v
}

func timeOf(t *testing.T, m map[string]any, key string) time.Time {
	t.Helper()
	s, ok := m[key].(string)
	if !ok || !rfc3339Seconds.MatchString(s) {
		t.Fatalf("%s = %#v, want an RFC 3339 UTC timestamp in whole seconds", key, m[key])
	}
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// near reports whether a is within slack of b.
func near(a, b time.Time, slack time.Duration) bool {
	d := a.Sub(b)
	return d >= -slack && d <= slack
}

// restCreate creates a token as the owner of secret with a JSON body and
// returns the created object (token fields plus secret), failing the test
// unless the answer is 201.
func restCreate(t *testing.T, s *testServer, secret, body string, headers ...string) map[string]any {
	t.Helper()
	resp, rb := s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(body), append([]string{bearer(secret)}, headers...)...)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/v1/me/tokens %s: status %d, want 201; body %s", body, resp.StatusCode, rb)
	}
	return dataOf(t, rb, withTokenKeys("secret"))
}

// restToken reads token id as the owner of secret, failing unless 200.
func restToken(t *testing.T, s *testServer, secret string, id int64) map[string]any {
	t.Helper()
	resp, body := s.get(t, tokenPath(id), bearer(secret))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET token %d: status %d, want 200; body %s", id, resp.StatusCode, body)
	}
	return dataOf(t, body, tokenKeys)
}

// restRevoke revokes token id as the owner of secret, failing unless 204.
func restRevoke(t *testing.T, s *testServer, secret string, id int64) {
	t.Helper()
	resp, body := s.do(t, http.MethodDelete, tokenPath(id), bearer(secret))
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE token %d: status %d, want 204; body %s", id, resp.StatusCode, body)
	}
}

// whoAmI returns the id of the token that secret authenticates, or 0 and
// the status if it does not authenticate.
func whoAmI(t *testing.T, s *testServer, secret string) (int64, int) {
	t.Helper()
	resp, body := s.get(t, "/api/v1/me/tokens/current", bearer(secret))
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusUnauthorized {
			problemOf(t, resp, body)
		}
		return 0, resp.StatusCode
	}
	return idOf(t, dataOf(t, body, tokenKeys)), resp.StatusCode
}

// tokenPage is one page of GET /api/v1/me/tokens.
type tokenPage struct {
	items []map[string]any
	ids   []int64
	next  *string
}

// listPage fetches GET /api/v1/me/tokens?query as the owner of secret and
// checks its shape: exactly data (token objects) and next_cursor (string
// or null).
func listPage(t *testing.T, s *testServer, secret, query string) tokenPage {
	t.Helper()
	path := "/api/v1/me/tokens"
	if query != "" {
		path += "?" + query
	}
	resp, body := s.get(t, path, bearer(secret))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, want 200; body %s", path, resp.StatusCode, body)
	}
	top := decodeObject(t, body)
	if keys := sortedKeys(top); !slices.Equal(keys, []string{"data", "next_cursor"}) {
		t.Fatalf("GET %s: top-level keys = %v, want [data next_cursor]", path, keys)
	}
	data, ok := top["data"].([]any)
	if !ok {
		t.Fatalf("GET %s: data is %T, want an array", path, top["data"])
	}
	var p tokenPage
	for _, it := range data {
		m, ok := it.(map[string]any)
		if !ok {
			t.Fatalf("GET %s: item is %T, want an object", path, it)
		}
		if keys := sortedKeys(m); !slices.Equal(keys, tokenKeys) {
			t.Errorf("GET %s: item keys = %v, want %v", path, keys, tokenKeys)
		}
		if _, has := m["secret"]; has {
			t.Errorf("GET %s: a listed token shows a secret", path)
		}
		p.items = append(p.items, m)
		p.ids = append(p.ids, idOf(t, m))
	}
	switch c := top["next_cursor"].(type) {
	case nil:
	case string:
		if c == "" {
			t.Errorf("GET %s: next_cursor is \"\", want a cursor or null", path)
		}
		p.next = &c
	default:
		t.Fatalf("GET %s: next_cursor = %#v, want a string or null", path, c)
	}
	return p
}

// walk lists all pages of query, starting at cursor (the first page if
// empty), and returns the pages.
func walk(t *testing.T, s *testServer, secret, query string) []tokenPage {
	t.Helper()
	return walkFrom(t, s, secret, query, "")
}

func walkFrom(t *testing.T, s *testServer, secret, query, cursor string) []tokenPage {
	t.Helper()
	var pages []tokenPage
	for range 1000 {
		q := query
		if cursor != "" {
			if q != "" {
				q += "&"
			}
			q += "cursor=" + cursor
		}
		p := listPage(t, s, secret, q)
		pages = append(pages, p)
		if p.next == nil {
			return pages
		}
		cursor = *p.next
	}
	t.Fatalf("listing %q did not end", query)
	return nil
}

func allIDs(pages []tokenPage) []int64 {
	var ids []int64
	for _, p := range pages {
		ids = append(ids, p.ids...)
	}
	return ids
}

// strictlyDescending reports whether ids are newest first without repeats.
func strictlyDescending(ids []int64) bool {
	for i := 1; i < len(ids); i++ {
		if ids[i] >= ids[i-1] {
			return false
		}
	}
	return true
}

// snapshot is everything the caller's tokens say except what every
// authenticated request changes (usage_count and last_used_at), so that a
// refused request can be shown to have written nothing.
func snapshot(t *testing.T, s *testServer, secret string) string {
	t.Helper()
	var out []string
	for _, p := range walk(t, s, secret, "limit=100") {
		for _, m := range p.items {
			m = maps.Clone(m)
			delete(m, "usage_count")
			delete(m, "last_used_at")
			b, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		}
	}
	return strings.Join(out, "\n")
}

// wantProblem checks that the answer is a problem with the status and
// that its errors name exactly fields. With no fields given, errors is not
// looked at; an explicit empty list requires that there is none.
func wantProblem(t *testing.T, resp *http.Response, body []byte, status int, fields ...string) problem {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status = %d, want %d; body %s", resp.StatusCode, status, body)
	}
	p := problemOf(t, resp, body)
	if p.Detail == "" {
		t.Errorf("problem has no detail: %s", body)
	}
	if fields == nil {
		return p
	}
	var got []string
	for _, e := range p.Errors {
		got = append(got, e.Field)
		if e.Detail == "" {
			t.Errorf("errors[] entry for %q has no detail", e.Field)
		}
	}
	slices.Sort(got)
	want := slices.Clone(fields)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("errors[] fields = %q, want %q; body %s", got, want, body)
	}
	return p
}

func fieldDetail(p problem, field string) string {
	for _, e := range p.Errors {
		if e.Field == field {
			return e.Detail
		}
	}
	return ""
}

func TestLifecycleRESTCreate(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bob's bootstrap")

	t.Run("201 with Location, exact shape, owned by the caller", func(t *testing.T) {
		before := time.Now().UTC().Truncate(time.Second)
		resp, body := s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(`{"name":"x"}`), bearer(alice.Secret))
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("status = %d, want 201; body %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != jsonType {
			t.Errorf("Content-Type = %q, want %s", ct, jsonType)
		}
		if resp.Header.Get("Idempotent-Replayed") != "" {
			t.Errorf("a create without Idempotency-Key says Idempotent-Replayed: %q", resp.Header.Get("Idempotent-Replayed"))
		}
		data := dataOf(t, body, withTokenKeys("secret"))
		id := idOf(t, data)
		if got, want := resp.Header.Get("Location"), tokenPath(id); got != want {
			t.Errorf("Location = %q, want %q", got, want)
		}
		sec, _ := data["secret"].(string)
		if !secretPattern.MatchString(sec) {
			t.Fatalf("secret = %#v, want tkd_ and 38 alphanumerics", data["secret"])
		}
		if data["name"] != "x" || data["status"] != "active" || data["usage_count"] != json.Number("0") {
			t.Errorf("name, status, usage_count = %#v, %#v, %#v; want x, active, 0", data["name"], data["status"], data["usage_count"])
		}
		for _, k := range []string{"last_used_at", "expires_at", "allowed_ips"} {
			if data[k] != nil {
				t.Errorf("%s = %#v, want null", k, data[k])
			}
		}
		if c := timeOf(t, data, "created_at"); c.Before(before) || c.After(time.Now()) {
			t.Errorf("created_at = %v, want about now", c)
		}

		// The new secret works at once, as that very token.
		if got, code := whoAmI(t, s, sec); code != 200 || got != id {
			t.Errorf("new secret: current token = %d (status %d), want %d", got, code, id)
		}
		// The caller owns it; another user does not see it.
		if got := restToken(t, s, alice.Secret, id); got["name"] != "x" || got["usage_count"] != json.Number("1") {
			t.Errorf("owner reads name %v usage %v, want x, 1", got["name"], got["usage_count"])
		}
		resp, body = s.get(t, tokenPath(id), bearer(bob.Secret))
		wantProblem(t, resp, body, http.StatusNotFound)
		if ids := allIDs(walk(t, s, bob.Secret, "")); slices.Contains(ids, id) {
			t.Errorf("bob's list %v holds alice's new token %d", ids, id)
		}
		if ids := allIDs(walk(t, s, alice.Secret, "")); !slices.Contains(ids, id) || !slices.Contains(ids, alice.ID) {
			t.Errorf("alice's list %v lacks token %d or %d", ids, id, alice.ID)
		}
		// A charset parameter is still JSON.
		resp, body = s.send(t, http.MethodPost, "/api/v1/me/tokens", "application/json; charset=utf-8", []byte(`{"name":"charset"}`), bearer(alice.Secret))
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("Content-Type with charset: status %d, want 201; body %s", resp.StatusCode, body)
		}
	})

	t.Run("expires_in_seconds", func(t *testing.T) {
		data := restCreate(t, s, alice.Secret, `{"name":"in an hour","expires_in_seconds":3600}`)
		exp, created := timeOf(t, data, "expires_at"), timeOf(t, data, "created_at")
		if d := exp.Sub(created); d < 3600*time.Second || d > 3601*time.Second {
			t.Errorf("expires_at - created_at = %v, want 1h (rounded up to a second)", d)
		}
		if data["status"] != "active" {
			t.Errorf("status = %v", data["status"])
		}
	})

	t.Run("expires_at", func(t *testing.T) {
		at := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
		data := restCreate(t, s, alice.Secret, fmt.Sprintf(`{"name":"at","expires_at":%q}`, at.Format(time.RFC3339)))
		if got := data["expires_at"]; got != at.Format(time.RFC3339) {
			t.Errorf("expires_at = %v, want %s", got, at.Format(time.RFC3339))
		}
		// An offset is accepted and shown in UTC.
		zone := time.FixedZone("", 2*3600)
		data = restCreate(t, s, alice.Secret, fmt.Sprintf(`{"name":"at+02","expires_at":%q}`, at.In(zone).Format(time.RFC3339)))
		if got := data["expires_at"]; got != at.Format(time.RFC3339) {
			t.Errorf("expires_at given as %s = %v, want %s", at.In(zone).Format(time.RFC3339), got, at.Format(time.RFC3339))
		}
		if got := restToken(t, s, alice.Secret, idOf(t, data))["expires_at"]; got != at.Format(time.RFC3339) {
			t.Errorf("stored expires_at = %v, want %s", got, at.Format(time.RFC3339))
		}
	})

	t.Run("allowed_ips are canonicalised", func(t *testing.T) {
		data := restCreate(t, s, alice.Secret, `{"name":"ips","allowed_ips":["2001:DB8::1","10.0.0.0/8","::ffff:192.0.2.1","2001:DB8:0:0::/64"]}`)
		want := []any{"2001:db8::1", "10.0.0.0/8", "192.0.2.1", "2001:db8::/64"}
		if !reflect.DeepEqual(data["allowed_ips"], want) {
			t.Errorf("allowed_ips = %#v, want %#v", data["allowed_ips"], want)
		}
		// The restriction applies at once: this client is 127.0.0.1.
		if _, code := whoAmI(t, s, data["secret"].(string)); code != http.StatusUnauthorized {
			t.Errorf("token restricted to other addresses: status %d, want 401", code)
		}
		data = restCreate(t, s, alice.Secret, `{"name":"loopback","allowed_ips":["127.0.0.1"]}`)
		if got, code := whoAmI(t, s, data["secret"].(string)); code != 200 || got != idOf(t, data) {
			t.Errorf("token restricted to 127.0.0.1: status %d, want 200", code)
		}
	})

	t.Run("refused requests write nothing", func(t *testing.T) {
		future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		long := strings.Repeat("n", 101)
		for _, tc := range []struct {
			name        string
			contentType string
			body        string
			headers     []string
			status      int
			fields      []string // nil: do not check errors[]
			detail      string   // the problem's detail or a field's must mention it
		}{
			{"both expiries", jsonType, `{"name":"x","expires_at":"` + future + `","expires_in_seconds":60}`, nil, 400, []string{"expires_at"}, ""},
			{"expires_at in the past", jsonType, `{"name":"x","expires_at":"2020-01-01T00:00:00Z"}`, nil, 400, []string{"expires_at"}, "future"},
			// The zero time must not read as "never expires".
			{"expires_at the year 1", jsonType, `{"name":"x","expires_at":"0001-01-01T00:00:00Z"}`, nil, 400, []string{"expires_at"}, "future"},
			{"expires_at the year 1, and expires_in_seconds", jsonType, `{"name":"x","expires_at":"0001-01-01T00:00:00Z","expires_in_seconds":60}`, nil, 400, []string{"expires_at"}, ""},
			{"expires_at not RFC 3339", jsonType, `{"name":"x","expires_at":"tomorrow"}`, nil, 400, []string{"expires_at"}, ""},
			{"expires_at a number", jsonType, `{"name":"x","expires_at":1893456000}`, nil, 400, []string{"expires_at"}, ""},
			{"negative expires_in_seconds", jsonType, `{"name":"x","expires_in_seconds":-5}`, nil, 400, []string{"expires_in_seconds"}, ""},
			{"expires_in_seconds fractional", jsonType, `{"name":"x","expires_in_seconds":1.5}`, nil, 400, []string{"expires_in_seconds"}, "integer"},
			{"empty name", jsonType, `{"name":""}`, nil, 400, []string{"name"}, ""},
			{"no name", jsonType, `{}`, nil, 400, []string{"name"}, ""},
			{"empty body", jsonType, ``, nil, 400, []string{"name"}, ""},
			{"101-character name", jsonType, `{"name":"` + long + `"}`, nil, 400, []string{"name"}, "100"},
			{"control character in name", jsonType, `{"name":"bell\u0007"}`, nil, 400, []string{"name"}, "printable"},
			{"newline in name", jsonType, `{"name":"two\nlines"}`, nil, 400, []string{"name"}, "printable"},
			{"blank name", jsonType, `{"name":"   "}`, nil, 400, []string{"name"}, "blank"},
			{"CIDR with host bits", jsonType, `{"name":"x","allowed_ips":["10.0.0.1/24"]}`, nil, 400, []string{"allowed_ips"}, "10.0.0.0/24"},
			{"not an IP", jsonType, `{"name":"x","allowed_ips":["10.0.0.300"]}`, nil, 400, []string{"allowed_ips"}, "10.0.0.300"},
			{"duplicate IP", jsonType, `{"name":"x","allowed_ips":["10.0.0.1","10.0.0.1"]}`, nil, 400, []string{"allowed_ips"}, ""},
			{"several bad fields", jsonType, `{"name":"","allowed_ips":["nope"],"expires_in_seconds":-1}`, nil, 400, []string{"name", "allowed_ips", "expires_in_seconds"}, ""},
			{"unknown field", jsonType, `{"name":"x","nope":1}`, nil, 400, []string{"nope"}, ""},
			{"camelCase alias", jsonType, `{"name":"x","expiresAt":"` + future + `"}`, nil, 400, []string{"expiresAt"}, ""},
			{"camelCase expiresInSeconds", jsonType, `{"name":"x","expiresInSeconds":60}`, nil, 400, []string{"expiresInSeconds"}, ""},
			{"name a number", jsonType, `{"name":5}`, nil, 400, []string{"name"}, "string"},
			{"expires_in_seconds a string", jsonType, `{"name":"x","expires_in_seconds":"60"}`, nil, 400, []string{"expires_in_seconds"}, "integer"},
			{"allowed_ips a string", jsonType, `{"name":"x","allowed_ips":"10.0.0.1"}`, nil, 400, []string{"allowed_ips"}, "array"},
			{"allowed_ips of numbers", jsonType, `{"name":"x","allowed_ips":[10]}`, nil, 400, []string{"allowed_ips"}, ""},
			// Values protojson refuses with only a generic message.
			{"allowed_ips holding null", jsonType, `{"name":"x","allowed_ips":[null]}`, nil, 400, []string{"allowed_ips"}, "null"},
			{"name with half a surrogate pair", jsonType, `{"name":"a\ud800"}`, nil, 400, []string{"name"}, "Unicode"},
			{"name with a lone low surrogate", jsonType, `{"name":"\udc00a"}`, nil, 400, []string{"name"}, "Unicode"},
			{"name not UTF-8", jsonType, "{\"name\":\"a\xff\"}", nil, 400, []string{"name"}, "Unicode"},
			{"name with a raw surrogate", jsonType, "{\"name\":\"a\xed\xa0\x80\"}", nil, 400, []string{"name"}, "Unicode"},
			{"allowed_ips not UTF-8", jsonType, "{\"name\":\"x\",\"allowed_ips\":[\"\xff\"]}", nil, 400, []string{"allowed_ips"}, "Unicode"},
			{"expires_at in year 0", jsonType, `{"name":"x","expires_at":"0000-01-01T00:00:00Z"}`, nil, 400, []string{"expires_at"}, "0001"},
			{"expires_at past nanoseconds", jsonType, `{"name":"x","expires_at":"2030-01-01T00:00:00.1234567891Z"}`, nil, 400, []string{"expires_at"}, "RFC 3339"},
			{"several type errors", jsonType, `{"name":5,"nope":true,"allowed_ips":"x"}`, nil, 400, []string{"name", "nope", "allowed_ips"}, ""},
			{"duplicate key", jsonType, `{"name":"x","name":"y"}`, nil, 400, []string{"name"}, "more than once"},
			{"not JSON", jsonType, `{"name":`, nil, 400, []string{}, "JSON"},
			{"garbage", jsonType, `name=x`, nil, 400, []string{}, "JSON"},
			{"a JSON array", jsonType, `[{"name":"x"}]`, nil, 400, []string{}, "object"},
			{"a JSON string", jsonType, `"x"`, nil, 400, []string{}, "object"},
			{"null", jsonType, `null`, nil, 400, []string{}, "object"},
			{"two objects", jsonType, `{"name":"x"}{"name":"y"}`, nil, 400, []string{}, "one JSON object"},
			{"trailing garbage", jsonType, `{"name":"x"} x`, nil, 400, []string{}, ""},
			{"text/plain", "text/plain", `{"name":"x"}`, nil, 415, nil, "application/json"},
			{"no Content-Type", "", `{"name":"x"}`, nil, 415, nil, "application/json"},
			{"JSON in another charset", jsonType + "; charset=latin1", `{"name":"x"}`, nil, 415, nil, "application/json"},
			{"form", "application/x-www-form-urlencoded", `name=x`, nil, 415, nil, ""},
			{"two Content-Types", jsonType, `{"name":"x"}`, []string{"Content-Type: text/plain"}, 415, nil, "one Content-Type"},
			{"short Idempotency-Key", jsonType, `{"name":"x"}`, []string{"Idempotency-Key: abc"}, 400, []string{"Idempotency-Key"}, "16"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := snapshot(t, s, alice.Secret)
				headers := append([]string{bearer(alice.Secret)}, tc.headers...)
				resp, body := s.send(t, http.MethodPost, "/api/v1/me/tokens", tc.contentType, []byte(tc.body), headers...)
				p := wantProblem(t, resp, body, tc.status, tc.fields...)
				if tc.detail != "" {
					all := p.Detail
					for _, e := range p.Errors {
						all += " " + e.Detail
					}
					if !strings.Contains(all, tc.detail) {
						t.Errorf("problem %s does not mention %q", body, tc.detail)
					}
				}
				if tc.status == http.StatusUnsupportedMediaType && resp.Header.Get("Accept") != jsonType {
					t.Errorf("415 Accept = %q, want %s", resp.Header.Get("Accept"), jsonType)
				}
				if resp.Header.Get("Location") != "" {
					t.Errorf("refused create sent Location %q", resp.Header.Get("Location"))
				}
				if after := snapshot(t, s, alice.Secret); after != before {
					t.Errorf("refused create changed alice's tokens:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
	})

	t.Run("an encoded body is 415, not read as plain", func(t *testing.T) {
		before := snapshot(t, s, alice.Secret)
		for _, ce := range []string{"br", "gzip", "identity, gzip"} {
			// The body is plain JSON: read as plain, it would create a token.
			resp, body := s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(`{"name":"x"}`), bearer(alice.Secret), "Content-Encoding: "+ce)
			wantProblem(t, resp, body, http.StatusUnsupportedMediaType)
			if got := resp.Header.Get("Accept-Encoding"); got != "identity" {
				t.Errorf("Content-Encoding %s: 415 Accept-Encoding = %q, want identity", ce, got)
			}
		}
		if after := snapshot(t, s, alice.Secret); after != before {
			t.Errorf("refused creates changed alice's tokens")
		}
		resp, body := s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(`{"name":"identity"}`), bearer(alice.Secret), "Content-Encoding: identity")
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("Content-Encoding: identity: status %d, want 201; %s", resp.StatusCode, body)
		}
	})

	t.Run("the host-bits detail suggests the masked range", func(t *testing.T) {
		resp, body := s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(`{"name":"x","allowed_ips":["10.0.0.1/24"]}`), bearer(alice.Secret))
		p := wantProblem(t, resp, body, 400, "allowed_ips")
		if d := fieldDetail(p, "allowed_ips"); !strings.Contains(d, "10.0.0.0/24") || !strings.Contains(d, "10.0.0.1/24") {
			t.Errorf("allowed_ips detail = %q, want it to quote 10.0.0.1/24 and suggest 10.0.0.0/24", d)
		}
	})

	t.Run("unauthenticated create writes nothing", func(t *testing.T) {
		before := snapshot(t, s, alice.Secret)
		resp, body := s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(`{"name":"x"}`))
		wantProblem(t, resp, body, http.StatusUnauthorized)
		resp, body = s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(`{"name":"x"}`), bearer(mustSecret(t)))
		wantProblem(t, resp, body, http.StatusUnauthorized)
		if after := snapshot(t, s, alice.Secret); after != before {
			t.Errorf("unauthenticated create changed alice's tokens")
		}
	})
}

func TestLifecycleRESTServerLimits(t *testing.T) {
	t.Parallel()
	s := startServer(t, "", "--max-token-lifetime", "1h", "--max-body-bytes", "1024", "--max-tokens-per-user", "3", "--max-rotation-grace", "1m")
	alice := createToken(t, s.db, "alice", "bootstrap") // live token 1 of 3

	refused := func(t *testing.T, do func() (*http.Response, []byte), status int, fields ...string) problem {
		t.Helper()
		before := snapshot(t, s, alice.Secret)
		resp, body := do()
		p := wantProblem(t, resp, body, status, fields...)
		if after := snapshot(t, s, alice.Secret); after != before {
			t.Errorf("refused request changed alice's tokens:\nbefore %s\nafter  %s", before, after)
		}
		return p
	}
	create := func(body string) func() (*http.Response, []byte) {
		return func() (*http.Response, []byte) {
			return s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(body), bearer(alice.Secret))
		}
	}

	t.Run("lifetime beyond the maximum", func(t *testing.T) {
		at := time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)
		p := refused(t, create(`{"name":"x","expires_at":"`+at+`"}`), 400, "expires_at")
		if d := fieldDetail(p, "expires_at"); !strings.Contains(d, "1h") {
			t.Errorf("detail %q does not state the maximum", d)
		}
		refused(t, create(`{"name":"x","expires_in_seconds":7200}`), 400, "expires_in_seconds")
		refused(t, create(`{"name":"x","expires_in_seconds":3601}`), 400, "expires_in_seconds")
		refused(t, create(`{"name":"x","expires_in_seconds":9223372036854775807}`), 400, "expires_in_seconds")
	})

	t.Run("body over the cap", func(t *testing.T) {
		big := []byte(`{"name":"` + strings.Repeat("a", 1989) + `"}`)
		if len(big) != 2000 {
			t.Fatalf("body is %d bytes", len(big))
		}
		p := refused(t, func() (*http.Response, []byte) {
			return s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, big, bearer(alice.Secret))
		}, http.StatusRequestEntityTooLarge)
		if !strings.Contains(p.Detail, "1024") {
			t.Errorf("413 detail %q does not state the cap", p.Detail)
		}
		refused(t, func() (*http.Response, []byte) {
			return s.sendChunked(t, http.MethodPost, "/api/v1/me/tokens", jsonType, big, bearer(alice.Secret))
		}, http.StatusRequestEntityTooLarge)
		// The cap applies to every route with a body.
		refused(t, func() (*http.Response, []byte) {
			return s.sendChunked(t, http.MethodPatch, tokenPath(alice.ID), jsonType, big, bearer(alice.Secret))
		}, http.StatusRequestEntityTooLarge)
		refused(t, func() (*http.Response, []byte) {
			return s.send(t, http.MethodPost, tokenPath(alice.ID)+"/rotate", jsonType, big, bearer(alice.Secret))
		}, http.StatusRequestEntityTooLarge)
		if _, code := whoAmI(t, s, alice.Secret); code != 200 {
			t.Errorf("alice's secret after refused rotate: status %d", code)
		}
	})

	t.Run("grace beyond the maximum", func(t *testing.T) {
		p := refused(t, func() (*http.Response, []byte) {
			return s.send(t, http.MethodPost, tokenPath(alice.ID)+"/rotate", jsonType, []byte(`{"grace_period_seconds":120}`), bearer(alice.Secret))
		}, 400, "grace_period_seconds")
		if d := fieldDetail(p, "grace_period_seconds"); !strings.Contains(d, "1m") {
			t.Errorf("detail %q does not state the maximum", d)
		}
		if _, code := whoAmI(t, s, alice.Secret); code != 200 {
			t.Errorf("alice's secret after refused rotate: status %d, want 200 (nothing rotated)", code)
		}
	})

	t.Run("quota of live tokens", func(t *testing.T) {
		// Exactly the maximum lifetime, and a body just under the cap.
		first := restCreate(t, s, alice.Secret, `{"name":"two","expires_in_seconds":3600}`)
		padded := `{"name":"three"` + strings.Repeat(" ", 1000) + `}`
		second := restCreate(t, s, alice.Secret, padded)
		p := refused(t, create(`{"name":"four"}`), http.StatusConflict)
		if !strings.Contains(p.Detail, "3") {
			t.Errorf("409 detail %q does not state the limit", p.Detail)
		}
		if p.Errors != nil {
			t.Errorf("409 has errors[]: %+v", p.Errors)
		}
		// Revoked tokens do not count.
		restRevoke(t, s, alice.Secret, idOf(t, second))
		fourth := restCreate(t, s, alice.Secret, `{"name":"four"}`)
		if idOf(t, fourth) <= idOf(t, first) {
			t.Errorf("new token id %d not above %d", idOf(t, fourth), idOf(t, first))
		}
		refused(t, create(`{"name":"five"}`), http.StatusConflict)
		// Another user has their own quota.
		bob := createToken(t, s.db, "bob", "bob's")
		restCreate(t, s, bob.Secret, `{"name":"bob two"}`)
	})
}

func TestLifecycleRESTIdempotency(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bootstrap")
	const key = "Idempotency-Key: 5f2b9c1e-8a4d-4c7e-9b3a-2d6f0e1a7c48"
	body := `{"name":"deploy","expires_in_seconds":3600,"allowed_ips":["127.0.0.1"]}`

	post := func(secret, body string, headers ...string) (*http.Response, []byte) {
		return s.send(t, http.MethodPost, "/api/v1/me/tokens", jsonType, []byte(body), append([]string{bearer(secret)}, headers...)...)
	}
	countNamed := func(secret, name string) int {
		n := 0
		for _, p := range walk(t, s, secret, "") {
			for _, m := range p.items {
				if m["name"] == name {
					n++
				}
			}
		}
		return n
	}

	resp1, body1 := post(alice.Secret, body, key)
	if resp1.StatusCode != http.StatusCreated {
		t.Fatalf("first create: status %d; body %s", resp1.StatusCode, body1)
	}
	if got := resp1.Header.Get("Idempotent-Replayed"); got != "" {
		t.Errorf("first create: Idempotent-Replayed = %q, want none", got)
	}
	first := dataOf(t, body1, withTokenKeys("secret"))

	t.Run("same key and body replays", func(t *testing.T) {
		for _, b := range []string{body, `{ "allowed_ips": ["127.0.0.1"], "expires_in_seconds": 3600, "name": "deploy" }`} {
			resp, rb := post(alice.Secret, b, key)
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("retry: status %d, want 201; body %s", resp.StatusCode, rb)
			}
			if got := resp.Header.Get("Idempotent-Replayed"); got != "true" {
				t.Errorf("retry: Idempotent-Replayed = %q, want true", got)
			}
			again := dataOf(t, rb, withTokenKeys("secret"))
			if idOf(t, again) != idOf(t, first) || again["secret"] != first["secret"] {
				t.Errorf("retry returned token %v secret %v, want %v %v", again["id"], again["secret"], first["id"], first["secret"])
			}
			if resp.Header.Get("Location") != resp1.Header.Get("Location") {
				t.Errorf("retry Location = %q, want %q", resp.Header.Get("Location"), resp1.Header.Get("Location"))
			}
			if again["expires_at"] != first["expires_at"] || again["created_at"] != first["created_at"] {
				t.Errorf("retry shows expires_at %v created_at %v, want the original %v %v", again["expires_at"], again["created_at"], first["expires_at"], first["created_at"])
			}
		}
		if n := countNamed(alice.Secret, "deploy"); n != 1 {
			t.Errorf("alice has %d tokens named deploy, want 1", n)
		}
		if got, code := whoAmI(t, s, first["secret"].(string)); code != 200 || got != idOf(t, first) {
			t.Errorf("replayed secret: current = %d, status %d; want %d, 200", got, code, idOf(t, first))
		}
	})

	t.Run("same key, different body is 409", func(t *testing.T) {
		before := snapshot(t, s, alice.Secret)
		for _, b := range []string{
			`{"name":"other","expires_in_seconds":3600,"allowed_ips":["127.0.0.1"]}`,
			`{"name":"deploy","expires_in_seconds":3601,"allowed_ips":["127.0.0.1"]}`,
			`{"name":"deploy","expires_in_seconds":3600}`,
		} {
			resp, rb := post(alice.Secret, b, key)
			p := wantProblem(t, resp, rb, http.StatusConflict)
			if !strings.Contains(p.Detail, "Idempotency-Key") {
				t.Errorf("409 detail %q does not name the Idempotency-Key", p.Detail)
			}
		}
		if after := snapshot(t, s, alice.Secret); after != before {
			t.Errorf("conflicting retry changed alice's tokens")
		}
	})

	t.Run("another user with the same key gets their own token", func(t *testing.T) {
		resp, rb := post(bob.Secret, body, key)
		if resp.StatusCode != http.StatusCreated || resp.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("bob: status %d Idempotent-Replayed %q, want 201 and none; body %s", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), rb)
		}
		bobs := dataOf(t, rb, withTokenKeys("secret"))
		if idOf(t, bobs) == idOf(t, first) || bobs["secret"] == first["secret"] {
			t.Errorf("bob got alice's token %v", bobs["id"])
		}
		if got, code := whoAmI(t, s, bobs["secret"].(string)); code != 200 || got != idOf(t, bobs) {
			t.Errorf("bob's secret: current = %d, status %d", got, code)
		}
		// And bob's retry replays bob's token.
		resp, rb = post(bob.Secret, body, key)
		if again := dataOf(t, rb, withTokenKeys("secret")); resp.Header.Get("Idempotent-Replayed") != "true" || again["secret"] != bobs["secret"] {
			t.Errorf("bob's retry: Idempotent-Replayed %q, secret changed: %v", resp.Header.Get("Idempotent-Replayed"), again["secret"] != bobs["secret"])
		}
	})

	t.Run("a different key mints another token", func(t *testing.T) {
		data := restCreate(t, s, alice.Secret, body, "Idempotency-Key: 0c6e2f1a-55b7-4e0b-9d7e-3a1f2b4c5d6e")
		if idOf(t, data) == idOf(t, first) {
			t.Errorf("a new key replayed token %d", idOf(t, first))
		}
		if n := countNamed(alice.Secret, "deploy"); n != 2 {
			t.Errorf("alice has %d tokens named deploy, want 2", n)
		}
	})

	t.Run("a retry after the token was rotated is 409, not its dead secret", func(t *testing.T) {
		const k = "Idempotency-Key: 5b1d7c0e-9a43-4f6e-8c21-7d9e0f3a4b5c"
		made := restCreate(t, s, alice.Secret, `{"name":"rotated later"}`, k)
		resp, rb := s.send(t, http.MethodPost, tokenPath(idOf(t, made))+"/rotate", jsonType, []byte(`{}`), bearer(alice.Secret))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("rotate: status %d; %s", resp.StatusCode, rb)
		}
		resp, rb = post(alice.Secret, `{"name":"rotated later"}`, k)
		p := wantProblem(t, resp, rb, http.StatusConflict)
		if !strings.Contains(p.Detail, "rotated") || strings.Contains(string(rb), made["secret"].(string)) {
			t.Errorf("409 detail %q does not say the token was rotated, or the body carries the old secret", p.Detail)
		}
	})

	t.Run("invalid keys are 400", func(t *testing.T) {
		before := snapshot(t, s, alice.Secret)
		// Keys that are not valid gRPC metadata (a tab, a non-ASCII
		// letter), which grpc-gateway would drop, are refused, not
		// ignored: ignored, a retry would create a second token.
		for _, k := range []string{"", "abc", strings.Repeat("k", 15), strings.Repeat("k", 256),
			"5f2b9c1e-8a4d-4c7e-\t9b3a-2d6f0e1a7c48", "5f2b9c1e-8a4d-4c7e-\u00e9-2d6f0e1a7c48"} {
			resp, rb := post(alice.Secret, `{"name":"bad key"}`, "Idempotency-Key: "+k)
			wantProblem(t, resp, rb, http.StatusBadRequest, "Idempotency-Key")
		}
		for _, second := range []string{"0c6e2f1a-55b7-4e0b-9d7e-ffffffffffff", "0c6e2f1a-55b7-4e0b-9d7e-\u00e9"} {
			resp, rb := post(alice.Secret, `{"name":"bad key"}`, key, "Idempotency-Key: "+second)
			wantProblem(t, resp, rb, http.StatusBadRequest, "Idempotency-Key")
		}
		if after := snapshot(t, s, alice.Secret); after != before {
			t.Errorf("refused creates changed alice's tokens")
		}
	})
}

func TestLifecycleRESTList(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bob's bootstrap")
	bobOther := restCreate(t, s, bob.Secret, `{"name":"bob's other"}`)

	// One token that expires soon, for the status filter; its wait
	// overlaps with the rest of the test.
	short := restCreate(t, s, alice.Secret, `{"name":"short-lived","expires_in_seconds":1}`)
	shortExpiry := timeOf(t, short, "expires_at")
	want := []int64{alice.ID, idOf(t, short)}
	for i := range 25 {
		want = append(want, idOf(t, restCreate(t, s, alice.Secret, fmt.Sprintf(`{"name":"t%02d"}`, i))))
	}
	revoked := want[5]
	var added []int64 // created while paging, then revoked
	restRevoke(t, s, alice.Secret, revoked)
	slices.Reverse(want) // newest first
	if len(want) != 27 {
		t.Fatalf("%d tokens", len(want))
	}

	t.Run("default page is 20, newest first", func(t *testing.T) {
		p1 := listPage(t, s, alice.Secret, "")
		if !slices.Equal(p1.ids, want[:20]) {
			t.Errorf("page 1 ids = %v, want %v", p1.ids, want[:20])
		}
		if p1.next == nil {
			t.Fatal("page 1 has no next_cursor")
		}
		p2 := listPage(t, s, alice.Secret, "cursor="+*p1.next)
		if !slices.Equal(p2.ids, want[20:]) || p2.next != nil {
			t.Errorf("page 2 ids = %v next %v, want %v and null", p2.ids, p2.next, want[20:])
		}
		for _, m := range p1.items {
			if idOf(t, m) == revoked && m["status"] != "revoked" {
				t.Errorf("revoked token listed as %v", m["status"])
			}
		}
	})

	t.Run("limit=2 walks every token once, in order", func(t *testing.T) {
		pages := walk(t, s, alice.Secret, "limit=2")
		if len(pages) != 14 {
			t.Errorf("%d pages, want 14", len(pages))
		}
		for i, p := range pages {
			if i < len(pages)-1 && len(p.ids) != 2 {
				t.Errorf("page %d has %d tokens, want 2", i+1, len(p.ids))
			}
		}
		if got := allIDs(pages); !slices.Equal(got, want) || !strictlyDescending(got) {
			t.Errorf("walk = %v, want %v", got, want)
		}
		pages = walk(t, s, alice.Secret, "limit=100")
		if len(pages) != 1 || !slices.Equal(pages[0].ids, want) {
			t.Errorf("limit=100: %d pages, ids %v", len(pages), allIDs(pages))
		}
		pages = walk(t, s, alice.Secret, "limit=27")
		if len(pages) != 1 {
			t.Errorf("limit=27 over 27 tokens: %d pages, want 1 (no empty trailing page)", len(pages))
		}
	})

	t.Run("pages are stable while tokens are created", func(t *testing.T) {
		p1 := listPage(t, s, alice.Secret, "limit=5")
		if p1.next == nil || !slices.Equal(p1.ids, want[:5]) {
			t.Fatalf("page 1 = %v next %v, want %v", p1.ids, p1.next, want[:5])
		}
		for i := range 3 {
			added = append(added, idOf(t, restCreate(t, s, alice.Secret, fmt.Sprintf(`{"name":"late %d"}`, i))))
		}
		rest := walkFrom(t, s, alice.Secret, "limit=5", *p1.next)
		got := append(slices.Clone(p1.ids), allIDs(rest)...)
		if !slices.Equal(got, want) {
			t.Errorf("page 1 then the rest = %v, want the original %v (no duplicates, no gaps)", got, want)
		}
		for _, id := range added {
			restRevoke(t, s, alice.Secret, id) // keep the active count known
		}
		want = append(slices.Clone(added), want...)
		slices.Reverse(want[:3])
		if got := allIDs(walk(t, s, alice.Secret, "limit=7")); !slices.Equal(got, want) {
			t.Errorf("after inserts: %v, want %v", got, want)
		}
	})

	t.Run("status filters", func(t *testing.T) {
		time.Sleep(time.Until(shortExpiry.Add(50 * time.Millisecond)))
		byStatus := map[string][]int64{}
		for _, id := range want {
			st := "active"
			switch {
			case id == revoked || slices.Contains(added, id):
				st = "revoked"
			case id == idOf(t, short):
				st = "expired"
			}
			byStatus[st] = append(byStatus[st], id)
		}
		if len(byStatus["revoked"]) != 4 || len(byStatus["expired"]) != 1 || len(byStatus["active"]) != 25 {
			t.Fatalf("test bug: %v", byStatus)
		}
		for _, st := range []string{"active", "expired", "revoked"} {
			for _, q := range []string{"status=" + st, "status=" + st + "&limit=3"} {
				pages := walk(t, s, alice.Secret, q)
				if got := allIDs(pages); !slices.Equal(got, byStatus[st]) {
					t.Errorf("%s: ids %v, want %v", q, got, byStatus[st])
				}
				for _, p := range pages {
					for _, m := range p.items {
						if m["status"] != st {
							t.Errorf("%s: token %v has status %v", q, m["id"], m["status"])
						}
					}
				}
			}
		}
		// A page that is full of one status has no next page when no more
		// tokens have it.
		if p := listPage(t, s, alice.Secret, "status=expired&limit=1"); p.next != nil {
			t.Errorf("status=expired&limit=1: next_cursor %q, want null", *p.next)
		}
	})

	t.Run("another user's tokens never appear", func(t *testing.T) {
		got := allIDs(walk(t, s, bob.Secret, "limit=1"))
		if wantBob := []int64{idOf(t, bobOther), bob.ID}; !slices.Equal(got, wantBob) {
			t.Errorf("bob's list = %v, want %v", got, wantBob)
		}
		for _, id := range allIDs(walk(t, s, alice.Secret, "")) {
			if id == bob.ID || id == idOf(t, bobOther) {
				t.Errorf("alice's list holds bob's token %d", id)
			}
		}
		// A cursor from alice's listing shows bob only his own tokens.
		p := listPage(t, s, alice.Secret, "limit=1")
		for _, id := range allIDs(walkFrom(t, s, bob.Secret, "limit=1", *p.next)) {
			if id != bob.ID && id != idOf(t, bobOther) {
				t.Errorf("bob with alice's cursor sees token %d", id)
			}
		}
	})

	t.Run("bad parameters are 400", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			field string // "" : errors[] not checked
		}{
			{"limit=101", "limit"},
			{"limit=-1", "limit"},
			{"limit=abc", ""},
			{"limit=1.5", ""},
			{"limit=99999999999", ""},
			{"cursor=garbage", "cursor"},
			{"cursor=YzEAAAAAAAAAAA", "cursor"}, // "c1" and id 0
			{"status=bogus", "status"},
			{"status=Active", "status"},
		} {
			resp, body := s.get(t, "/api/v1/me/tokens?"+tc.query, bearer(alice.Secret))
			if tc.field != "" {
				wantProblem(t, resp, body, http.StatusBadRequest, tc.field)
			} else {
				wantProblem(t, resp, body, http.StatusBadRequest)
			}
		}
		resp, body := s.get(t, "/api/v1/me/tokens?limit=500&cursor=garbage&status=bogus", bearer(alice.Secret))
		wantProblem(t, resp, body, http.StatusBadRequest, "limit", "cursor", "status")
		resp, body = s.get(t, "/api/v1/me/tokens")
		wantProblem(t, resp, body, http.StatusUnauthorized)
	})

	t.Run("limit=0 means the default page, as documented", func(t *testing.T) {
		resp, body := s.get(t, "/api/v1/me/tokens?limit=0", bearer(alice.Secret))
		resp2, body2 := s.get(t, "/api/v1/me/tokens", bearer(alice.Secret))
		if resp.StatusCode != http.StatusOK || resp2.StatusCode != http.StatusOK {
			t.Fatalf("statuses %d, %d; want 200", resp.StatusCode, resp2.StatusCode)
		}
		a := decodeObject(t, body)["data"].([]any)
		b := decodeObject(t, body2)["data"].([]any)
		if len(a) != len(b) || len(a) > 20 {
			t.Errorf("?limit=0 gave %d tokens, no limit %d; want the same default page", len(a), len(b))
		}
	})

	t.Run("malformed integers in the query are named", func(t *testing.T) {
		for _, q := range []string{"limit=abc", "limit=1.5", "limit=99999999999", "limit=1&limit=2"} {
			resp, body := s.get(t, "/api/v1/me/tokens?"+q, bearer(alice.Secret))
			wantProblem(t, resp, body, http.StatusBadRequest, "limit")
		}
	})
}

func TestLifecycleRESTUpdate(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bootstrap")
	tok := restCreate(t, s, alice.Secret, `{"name":"old","expires_in_seconds":3600}`)
	id := idOf(t, tok)
	path := tokenPath(id)

	patch := func(body string, secret string) (*http.Response, []byte) {
		return s.send(t, http.MethodPatch, path, jsonType, []byte(body), bearer(secret))
	}
	ok := func(t *testing.T, body string) map[string]any {
		t.Helper()
		resp, rb := patch(body, alice.Secret)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("PATCH %s: status %d, want 200; body %s", body, resp.StatusCode, rb)
		}
		data := dataOf(t, rb, tokenKeys)
		if got := restToken(t, s, alice.Secret, id); !reflect.DeepEqual(got, data) {
			t.Errorf("PATCH answered %v, but GET reads %v", data, got)
		}
		return data
	}
	// same checks that a and b agree on every field but the named ones.
	same := func(t *testing.T, a, b map[string]any, except ...string) {
		t.Helper()
		for _, k := range tokenKeys {
			if !slices.Contains(except, k) && !reflect.DeepEqual(a[k], b[k]) {
				t.Errorf("%s changed from %#v to %#v", k, a[k], b[k])
			}
		}
	}
	before := restToken(t, s, alice.Secret, id)

	t.Run("name only", func(t *testing.T) {
		data := ok(t, `{"name":"new"}`)
		if data["name"] != "new" {
			t.Errorf("name = %v, want new", data["name"])
		}
		same(t, before, data, "name")
	})

	t.Run("allowed_ips set, then cleared with null and with []", func(t *testing.T) {
		data := ok(t, `{"allowed_ips":["10.0.0.0/8","2001:DB8::1"]}`)
		if want := []any{"10.0.0.0/8", "2001:db8::1"}; !reflect.DeepEqual(data["allowed_ips"], want) {
			t.Errorf("allowed_ips = %#v, want %#v", data["allowed_ips"], want)
		}
		if data["name"] != "new" {
			t.Errorf("name = %v, want it kept as new", data["name"])
		}
		same(t, before, data, "name", "allowed_ips")
		data = ok(t, `{"allowed_ips":null}`)
		if v, has := data["allowed_ips"]; !has || v != nil {
			t.Errorf("allowed_ips after null = %#v, want null", v)
		}
		ok(t, `{"allowed_ips":["10.0.0.0/8"]}`)
		data = ok(t, `{"allowed_ips":[]}`)
		if data["allowed_ips"] != nil {
			t.Errorf("allowed_ips after [] = %#v, want null", data["allowed_ips"])
		}
		same(t, before, data, "name")
	})

	t.Run("both at once", func(t *testing.T) {
		data := ok(t, `{"name":"both","allowed_ips":["127.0.0.1"]}`)
		if data["name"] != "both" || !reflect.DeepEqual(data["allowed_ips"], []any{"127.0.0.1"}) {
			t.Errorf("name, allowed_ips = %v, %v", data["name"], data["allowed_ips"])
		}
	})

	t.Run("the new restriction applies to the next request", func(t *testing.T) {
		mine := restCreate(t, s, alice.Secret, `{"name":"mine"}`)
		sec, mid := mine["secret"].(string), idOf(t, mine)
		mpath := tokenPath(mid)
		resp, body := s.send(t, http.MethodPatch, mpath, jsonType, []byte(`{"allowed_ips":["192.0.2.0/24"]}`), bearer(sec))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d; body %s", resp.StatusCode, body)
		}
		if _, code := whoAmI(t, s, sec); code != http.StatusUnauthorized {
			t.Errorf("token restricted away from this client: status %d, want 401", code)
		}
		resp, body = s.send(t, http.MethodPatch, mpath, jsonType, []byte(`{"allowed_ips":null}`), bearer(alice.Secret))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d; body %s", resp.StatusCode, body)
		}
		if got, code := whoAmI(t, s, sec); code != 200 || got != mid {
			t.Errorf("unrestricted again: status %d", code)
		}
	})

	t.Run("refused updates write nothing", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			secret string
			path   string
			ct     string
			body   string
			status int
			fields []string
		}{
			{"empty object", alice.Secret, path, jsonType, `{}`, 400, nil},
			{"no body", alice.Secret, path, jsonType, ``, 400, nil},
			{"unknown field", alice.Secret, path, jsonType, `{"nope":1}`, 400, []string{"nope"}},
			{"path parameter in the body", alice.Secret, path, jsonType, `{"token_id":5}`, 400, []string{"token_id"}},
			{"path parameter with a real change", alice.Secret, path, jsonType, `{"name":"sneaky","token_id":5}`, 400, []string{"token_id"}},
			{"read-only field", alice.Secret, path, jsonType, `{"status":"active"}`, 400, []string{"status"}},
			{"camelCase", alice.Secret, path, jsonType, `{"allowedIps":["10.0.0.0/8"]}`, 400, []string{"allowedIps"}},
			{"empty name", alice.Secret, path, jsonType, `{"name":""}`, 400, []string{"name"}},
			{"null name", alice.Secret, path, jsonType, `{"name":null}`, 400, []string{"name"}},
			{"name a number", alice.Secret, path, jsonType, `{"name":5}`, 400, []string{"name"}},
			{"bad IP and bad name", alice.Secret, path, jsonType, `{"name":"` + strings.Repeat("x", 101) + `","allowed_ips":["10.0.0.1/24"]}`, 400, []string{"name", "allowed_ips"}},
			{"allowed_ips a string", alice.Secret, path, jsonType, `{"allowed_ips":"10.0.0.0/8"}`, 400, []string{"allowed_ips"}},
			{"duplicate key", alice.Secret, path, jsonType, `{"name":"a","name":"b"}`, 400, []string{"name"}},
			{"array body", alice.Secret, path, jsonType, `[]`, 400, []string{}},
			{"text/plain", alice.Secret, path, "text/plain", `{"name":"x"}`, 415, nil},
			{"another user's token", bob.Secret, path, jsonType, `{"name":"bob was here"}`, 404, nil},
			{"missing token", alice.Secret, "/api/v1/me/tokens/999999", jsonType, `{"name":"x"}`, 404, nil},
			{"bad id", alice.Secret, "/api/v1/me/tokens/abc", jsonType, `{"name":"x"}`, 400, nil},
			{"no credentials", "", path, jsonType, `{"name":"x"}`, 401, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := snapshot(t, s, alice.Secret)
				bobBefore := snapshot(t, s, bob.Secret)
				var headers []string
				if tc.secret != "" {
					headers = append(headers, bearer(tc.secret))
				}
				resp, body := s.send(t, http.MethodPatch, tc.path, tc.ct, []byte(tc.body), headers...)
				wantProblem(t, resp, body, tc.status, tc.fields...)
				if after := snapshot(t, s, alice.Secret); after != before {
					t.Errorf("refused update changed alice's tokens:\nbefore %s\nafter  %s", before, after)
				}
				if after := snapshot(t, s, bob.Secret); after != bobBefore {
					t.Errorf("refused update changed bob's tokens")
				}
			})
		}
	})

	t.Run("update_mask comes from the body only", func(t *testing.T) {
		// grpc-gateway also fills UpdateTokenRequest from the query string;
		// the gateway drops the query of body routes, so
		// ?update_mask=allowed_ips cannot override the mask derived from
		// the body and silently remove the IP restriction.
		ok(t, `{"name":"masked","allowed_ips":["10.0.0.0/8"]}`)
		before := snapshot(t, s, alice.Secret)
		resp, body := s.send(t, http.MethodPatch, path+"?update_mask=allowed_ips", jsonType, []byte(`{"name":"y"}`), bearer(alice.Secret))
		if resp.StatusCode == http.StatusOK {
			data := dataOf(t, body, tokenKeys)
			if data["name"] != "y" || !reflect.DeepEqual(data["allowed_ips"], []any{"10.0.0.0/8"}) {
				t.Errorf("name, allowed_ips = %v, %v; want y, [10.0.0.0/8]", data["name"], data["allowed_ips"])
			}
		} else {
			wantProblem(t, resp, body, http.StatusBadRequest)
			if after := snapshot(t, s, alice.Secret); after != before {
				t.Errorf("refused update changed alice's tokens")
			}
		}
	})
}

func TestLifecycleRESTRevoke(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bootstrap")
	victim := restCreate(t, s, alice.Secret, `{"name":"victim"}`)
	vid, vsec := idOf(t, victim), victim["secret"].(string)
	path := tokenPath(vid)
	if got, code := whoAmI(t, s, vsec); code != 200 || got != vid {
		t.Fatalf("victim secret before revoke: status %d", code)
	}

	for i := range 2 {
		resp, body := s.do(t, http.MethodDelete, path, bearer(alice.Secret))
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE #%d: status %d, want 204; body %s", i+1, resp.StatusCode, body)
		}
		if len(body) != 0 {
			t.Errorf("DELETE #%d: body %q, want none", i+1, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "" {
			t.Errorf("DELETE #%d: Content-Type %q on an empty 204", i+1, ct)
		}
		if i == 0 {
			// Refused on the very next request.
			if _, code := whoAmI(t, s, vsec); code != http.StatusUnauthorized {
				t.Errorf("revoked secret: status %d, want 401", code)
			}
		}
	}
	data := restToken(t, s, alice.Secret, vid)
	if data["status"] != "revoked" || data["usage_count"] != json.Number("1") {
		t.Errorf("after revoke: status %v usage %v, want revoked and the one use before", data["status"], data["usage_count"])
	}
	if got := listPage(t, s, alice.Secret, "status=revoked").ids; !slices.Equal(got, []int64{vid}) {
		t.Errorf("revoked tokens = %v, want [%d]", got, vid)
	}

	t.Run("another user's token is 404 and stays active", func(t *testing.T) {
		other := restCreate(t, s, alice.Secret, `{"name":"keep"}`)
		oid := idOf(t, other)
		resp, body := s.do(t, http.MethodDelete, tokenPath(oid), bearer(bob.Secret))
		wantProblem(t, resp, body, http.StatusNotFound)
		resp, body = s.do(t, http.MethodDelete, "/api/v1/me/tokens/999999", bearer(bob.Secret))
		wantProblem(t, resp, body, http.StatusNotFound)
		if got, code := whoAmI(t, s, other["secret"].(string)); code != 200 || got != oid {
			t.Errorf("alice's token after bob's DELETE: status %d", code)
		}
		if restToken(t, s, alice.Secret, oid)["status"] != "active" {
			t.Errorf("bob revoked alice's token")
		}
		resp, body = s.do(t, http.MethodDelete, "/api/v1/me/tokens/0", bearer(alice.Secret))
		wantProblem(t, resp, body, http.StatusBadRequest)
		resp, body = s.do(t, http.MethodDelete, tokenPath(oid))
		wantProblem(t, resp, body, http.StatusUnauthorized)
	})

	t.Run("a token can revoke itself", func(t *testing.T) {
		self := restCreate(t, s, alice.Secret, `{"name":"self"}`)
		sec := self["secret"].(string)
		resp, body := s.do(t, http.MethodDelete, tokenPath(idOf(t, self)), bearer(sec))
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("self-revoke: status %d; body %s", resp.StatusCode, body)
		}
		if _, code := whoAmI(t, s, sec); code != http.StatusUnauthorized {
			t.Errorf("self-revoked secret: status %d, want 401", code)
		}
	})
}

func TestLifecycleRESTRotate(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	alice := createToken(t, s.db, "alice", "bootstrap")
	bob := createToken(t, s.db, "bob", "bootstrap")
	rotateKeys := withTokenKeys("secret", "previous_secret_expires_at")
	rotate := func(t *testing.T, secret string, id int64, ct string, body []byte) (*http.Response, []byte) {
		t.Helper()
		return s.send(t, http.MethodPost, tokenPath(id)+"/rotate", ct, body, bearer(secret))
	}
	// withGrace creates a token named name for alice and rotates it with
	// grace seconds of grace; it returns the id, the first secret and the
	// rotation's answer.
	withGrace := func(t *testing.T, name string, grace int) (int64, string, map[string]any) {
		t.Helper()
		tok := restCreate(t, s, alice.Secret, fmt.Sprintf(`{"name":%q}`, name))
		id := idOf(t, tok)
		resp, body := rotate(t, alice.Secret, id, jsonType, fmt.Appendf(nil, `{"grace_period_seconds":%d}`, grace))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("rotate: status %d; body %s", resp.StatusCode, body)
		}
		return id, tok["secret"].(string), dataOf(t, body, rotateKeys)
	}

	t.Run("rotations racing with one secret: one wins", func(t *testing.T) {
		// Each request authenticates before any commits; the store checks
		// the caller's secret again as each commits, so the losers are
		// refused as a replaced secret, and whoever raced the owner with a
		// leaked secret cannot end up holding the token.
		for round := range 5 {
			tok := restCreate(t, s, alice.Secret, fmt.Sprintf(`{"name":"race %d"}`, round))
			id, sec := idOf(t, tok), tok["secret"].(string)
			codes := make([]int, 8)
			var wg sync.WaitGroup
			for i := range codes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, _ := rotate(t, sec, id, jsonType, []byte(`{"grace_period_seconds":300}`))
					codes[i] = resp.StatusCode
				}()
			}
			wg.Wait()
			ok := 0
			for _, c := range codes {
				switch c {
				case http.StatusOK:
					ok++
				case http.StatusForbidden:
				default:
					t.Errorf("round %d: a racing rotation got %d", round, c)
				}
			}
			if ok != 1 {
				t.Errorf("round %d: %d of %d rotations with one secret succeeded (%v), want 1", round, ok, len(codes), codes)
			}
		}
	})

	t.Run("no grace: the old secret stops at once", func(t *testing.T) {
		tok := restCreate(t, s, alice.Secret, `{"name":"rot","allowed_ips":["127.0.0.1"],"expires_in_seconds":3600}`)
		id, old := idOf(t, tok), tok["secret"].(string)
		whoAmI(t, s, old) // one use before the rotation
		resp, body := rotate(t, alice.Secret, id, "", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("rotate: status %d, want 200; body %s", resp.StatusCode, body)
		}
		data := dataOf(t, body, rotateKeys)
		sec, _ := data["secret"].(string)
		if !secretPattern.MatchString(sec) || sec == old {
			t.Fatalf("new secret = %q, want a fresh tkd_ secret", sec)
		}
		for _, k := range []string{"id", "name", "allowed_ips", "expires_at", "created_at", "status"} {
			if !reflect.DeepEqual(data[k], tok[k]) {
				t.Errorf("%s changed from %#v to %#v", k, tok[k], data[k])
			}
		}
		if data["usage_count"] != json.Number("1") {
			t.Errorf("usage_count = %v, want 1 (kept)", data["usage_count"])
		}
		if prev := timeOf(t, data, "previous_secret_expires_at"); !near(prev, time.Now(), 2*time.Second) {
			t.Errorf("previous_secret_expires_at = %v, want now", prev)
		}
		if _, code := whoAmI(t, s, old); code != http.StatusUnauthorized {
			t.Errorf("old secret: status %d, want 401", code)
		}
		if got, code := whoAmI(t, s, sec); code != 200 || got != id {
			t.Errorf("new secret: current %d status %d, want %d 200", got, code, id)
		}
		// An empty JSON object is no grace too.
		resp, body = rotate(t, alice.Secret, id, jsonType, []byte(`{}`))
		if resp.StatusCode != 200 {
			t.Fatalf("rotate {}: status %d; body %s", resp.StatusCode, body)
		}
		if _, code := whoAmI(t, s, sec); code != http.StatusUnauthorized {
			t.Errorf("secret rotated out with {}: status %d, want 401", code)
		}
	})

	t.Run("grace keeps the old secret working and counted", func(t *testing.T) {
		id, old, data := withGrace(t, "graceful", 30)
		sec := data["secret"].(string)
		if prev := timeOf(t, data, "previous_secret_expires_at"); !near(prev, time.Now().Add(30*time.Second), 2*time.Second) {
			t.Errorf("previous_secret_expires_at = %v, want about 30s from now", prev)
		}
		for i, s2 := range []string{old, sec, old} {
			r, b := s.get(t, "/api/v1/me/tokens/current", bearer(s2))
			if r.StatusCode != 200 {
				t.Fatalf("request %d: status %d; body %s", i+1, r.StatusCode, b)
			}
			cur := dataOf(t, b, tokenKeys)
			if idOf(t, cur) != id || numberOf(t, cur, "usage_count") != int64(i+1) {
				t.Errorf("request %d: token %v usage %v, want %d and %d", i+1, cur["id"], cur["usage_count"], id, i+1)
			}
		}
		// Rotating again ends the first secret's grace: only the latest
		// two secrets work.
		resp, body := rotate(t, sec, id, jsonType, []byte(`{"grace_period_seconds":30}`))
		if resp.StatusCode != 200 {
			t.Fatalf("second rotate: status %d; body %s", resp.StatusCode, body)
		}
		third := dataOf(t, body, rotateKeys)["secret"].(string)
		if _, code := whoAmI(t, s, old); code != http.StatusUnauthorized {
			t.Errorf("first secret after a second rotation: status %d, want 401", code)
		}
		for _, s2 := range []string{sec, third} {
			if got, code := whoAmI(t, s, s2); code != 200 || got != id {
				t.Errorf("secret in use after the second rotation: status %d", code)
			}
		}
	})

	t.Run("the old secret reads but changes nothing", func(t *testing.T) {
		id, old, data := withGrace(t, "leaked", 60)
		sec := data["secret"].(string)
		if got, code := whoAmI(t, s, old); code != http.StatusOK || got != id {
			t.Fatalf("old secret in its grace period: current = %d, status %d; want it to read", got, code)
		}
		if r, b := s.get(t, "/api/v1/me/tokens", bearer(old)); r.StatusCode != http.StatusOK {
			t.Errorf("old secret lists: status %d; %s", r.StatusCode, b)
		}
		before := snapshot(t, s, alice.Secret)
		for _, c := range []struct{ method, path, body string }{
			{http.MethodPost, tokenPath(id) + "/rotate", `{}`}, // taking the token over
			{http.MethodPost, "/api/v1/me/tokens", `{"name":"minted with a leaked secret"}`},
			{http.MethodPatch, tokenPath(id), `{"allowed_ips":null}`},
			{http.MethodDelete, tokenPath(id), ``},
		} {
			ct := jsonType
			if c.body == "" {
				ct = ""
			}
			r, b := s.send(t, c.method, c.path, ct, []byte(c.body), bearer(old))
			if p := wantProblem(t, r, b, http.StatusForbidden); !strings.Contains(p.Detail, "rotation") {
				t.Errorf("%s %s with the old secret: detail %q does not say a rotation replaced it", c.method, c.path, p.Detail)
			}
		}
		if after := snapshot(t, s, alice.Secret); after != before {
			t.Errorf("changes asked for with the old secret changed alice's tokens")
		}
		if got, code := whoAmI(t, s, sec); code != http.StatusOK || got != id {
			t.Errorf("new secret after the refused changes: current = %d, status %d", got, code)
		}
		if r, b := rotate(t, sec, id, "", nil); r.StatusCode != http.StatusOK {
			t.Errorf("the new secret rotates: status %d; %s", r.StatusCode, b)
		}
	})

	t.Run("refused rotations write nothing", func(t *testing.T) {
		tok := restCreate(t, s, alice.Secret, `{"name":"stays"}`)
		id, sec := idOf(t, tok), tok["secret"].(string)
		dead := restCreate(t, s, alice.Secret, `{"name":"dead"}`)
		restRevoke(t, s, alice.Secret, idOf(t, dead))
		for _, tc := range []struct {
			name   string
			secret string
			id     int64
			ct     string
			body   string
			status int
			fields []string
		}{
			{"negative grace", alice.Secret, id, jsonType, `{"grace_period_seconds":-1}`, 400, []string{"grace_period_seconds"}},
			{"grace beyond the default maximum", alice.Secret, id, jsonType, `{"grace_period_seconds":86401}`, 400, []string{"grace_period_seconds"}},
			{"grace as a string", alice.Secret, id, jsonType, `{"grace_period_seconds":"30"}`, 400, []string{"grace_period_seconds"}},
			{"grace fractional", alice.Secret, id, jsonType, `{"grace_period_seconds":1.5}`, 400, []string{"grace_period_seconds"}},
			{"path parameter in the body", alice.Secret, id, jsonType, `{"token_id":5}`, 400, []string{"token_id"}},
			{"unknown field", alice.Secret, id, jsonType, `{"grace":30}`, 400, []string{"grace"}},
			{"text/plain", alice.Secret, id, "text/plain", `{"grace_period_seconds":30}`, 415, nil},
			{"revoked token", alice.Secret, idOf(t, dead), "", ``, 409, nil},
			{"another user's token", bob.Secret, id, "", ``, 404, nil},
			{"missing token", alice.Secret, 999999, "", ``, 404, nil},
			{"no credentials", "", id, "", ``, 401, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := snapshot(t, s, alice.Secret)
				var headers []string
				if tc.secret != "" {
					headers = append(headers, bearer(tc.secret))
				}
				resp, body := s.send(t, http.MethodPost, tokenPath(tc.id)+"/rotate", tc.ct, []byte(tc.body), headers...)
				wantProblem(t, resp, body, tc.status, tc.fields...)
				if after := snapshot(t, s, alice.Secret); after != before {
					t.Errorf("refused rotation changed alice's tokens")
				}
				if got, code := whoAmI(t, s, sec); code != 200 || got != id {
					t.Errorf("secret after refused rotation: status %d, want 200", code)
				}
			})
		}
	})
}

func TestLifecycleRESTCurrent(t *testing.T) {
	t.Parallel()
	s := startServer(t, "")
	alice := createToken(t, s.db, "alice", "bootstrap")
	tok := restCreate(t, s, alice.Secret, `{"name":"me","allowed_ips":["127.0.0.0/8"],"expires_in_seconds":600}`)
	id, sec := idOf(t, tok), tok["secret"].(string)

	var last map[string]any
	for want := int64(1); want <= 3; want++ {
		resp, body := s.get(t, "/api/v1/me/tokens/current", bearer(sec))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("current: status %d; body %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != jsonType {
			t.Errorf("Content-Type = %q", ct)
		}
		cur := dataOf(t, body, tokenKeys)
		if idOf(t, cur) != id || numberOf(t, cur, "usage_count") != want {
			t.Errorf("current #%d: id %v usage %v, want %d and %d (read-your-writes)", want, cur["id"], cur["usage_count"], id, want)
		}
		if timeOf(t, cur, "last_used_at").Before(timeOf(t, cur, "created_at")) {
			t.Errorf("last_used_at %v before created_at", cur["last_used_at"])
		}
		last = cur
	}
	// Same shape and content as GET /api/v1/me/tokens/{id} by the same
	// token, which counts one more use.
	byID := restToken(t, s, sec, id)
	for _, k := range tokenKeys {
		if k == "usage_count" || k == "last_used_at" {
			continue
		}
		if !reflect.DeepEqual(byID[k], last[k]) {
			t.Errorf("%s: current says %#v, by id %#v", k, last[k], byID[k])
		}
	}
	if numberOf(t, byID, "usage_count") != 4 {
		t.Errorf("usage_count by id = %v, want 4", byID["usage_count"])
	}
	for k, want := range map[string]any{"name": "me", "allowed_ips": []any{"127.0.0.0/8"}, "status": "active"} {
		if !reflect.DeepEqual(last[k], want) {
			t.Errorf("%s = %#v, want %#v", k, last[k], want)
		}
	}
	// Another token of the same user is a different current token.
	if got, code := whoAmI(t, s, alice.Secret); code != 200 || got != alice.ID {
		t.Errorf("bootstrap secret: current %d status %d, want %d", got, code, alice.ID)
	}
	resp, body := s.get(t, "/api/v1/me/tokens/current")
	wantProblem(t, resp, body, http.StatusUnauthorized)
	resp, body = s.get(t, "/api/v1/me/tokens/current", bearer(mustSecret(t)))
	wantProblem(t, resp, body, http.StatusUnauthorized)
	if got := strconv.FormatInt(numberOf(t, restToken(t, s, alice.Secret, id), "usage_count"), 10); got != "4" {
		t.Errorf("usage_count = %s after refused attempts, want 4", got)
	}
}
