package gateway

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// decodeJSON parses b keeping numbers exact.
func decodeJSON(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("invalid JSON %q: %v", b, err)
	}
	return v
}

// FuzzTokenEnvelope holds the hand-written encoder to encoding/json: for
// any token, both produce the same JSON value.
func FuzzTokenEnvelope(f *testing.F) {
	f.Add(int64(23145), "CI Deployments", int32(1), int64(12), int64(1712846105), int64(1735624800), true, "10.0.0.0/24", "203.0.113.12", true)
	f.Add(int64(-1), "quote \" backslash \\ nl \n tab \t nul \x00 del \x7f", int32(3), int64(0), int64(0), int64(-5), false, "", "", false)
	f.Add(int64(1), "emoji 👨\u200d👩 <&> \u2028\u2029 bad \xff\xfe", int32(2), int64(1<<62), int64(253402300799), int64(1), true, "\u2028", "\"", true)
	f.Fuzz(func(t *testing.T, id int64, name string, status int32, uses, lastUsed, expires int64, withIPs bool, ip1, ip2 string, withCreated bool) {
		tok := &tokenv1.Token{
			Id: id, Name: name, Status: tokenv1.TokenStatus(status), UsageCount: uses,
		}
		if withCreated {
			tok.CreatedAt = timestamppb.New(time.Unix(1700000000, 999))
		}
		// Keep timestamps within what RFC 3339 can print (years 0-9999).
		if lastUsed > 0 && lastUsed < 253402300799 {
			tok.LastUsedAt = timestamppb.New(time.Unix(lastUsed, 123))
		}
		if expires > 0 && expires < 253402300799 {
			tok.ExpiresAt = timestamppb.New(time.Unix(expires, 0))
		}
		if withIPs {
			tok.AllowedIps = []string{ip1, ip2}
		}
		got := decodeJSON(t, tokenEnvelope(tok))
		std, err := json.Marshal(envelope[Token]{Data: TokenJSON(tok)})
		if err != nil {
			t.Fatal(err)
		}
		if want := decodeJSON(t, std); !reflect.DeepEqual(got, want) {
			t.Fatalf("tokenEnvelope = %s\nencoding/json = %s", tokenEnvelope(tok), std)
		}
	})
}

func TestRESTMarshalerPassesRawJSON(t *testing.T) {
	m := newRESTMarshaler()
	out, err := m.Marshal(rawJSON(`{"a":1}`))
	if err != nil || string(out) != `{"a":1}` {
		t.Errorf("Marshal(rawJSON) = %s, %v", out, err)
	}
	out, err = m.Marshal(struct {
		X *string `json:"x"`
	}{})
	if err != nil || string(out) != `{"x":null}` {
		t.Errorf("Marshal(struct) = %s, %v", out, err)
	}
}
