package gateway

import (
	"encoding/json"
	"testing"
)

func TestPairedSurrogates(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want bool
	}{
		{`"plain"`, true},
		{`"\ud83d\ude00"`, true},        // a pair: 😀
		{`"x\u00e9\n\"\\"`, true},       // other escapes
		{`"\\ud800"`, true},             // an escaped backslash, then text
		{`"\ud800"`, false},             // high half alone
		{`"\ud800x"`, false},            // high half, then text
		{`"\ud800\u0041"`, false},       // high half, then not a low half
		{`"\udc00"`, false},             // low half alone
		{`"\ud83d\ude00\ude00"`, false}, // a pair, then a stray low half
		{`"\\\ud800"`, false},           // escaped backslash, then a lone half
		{`"\ud800\ud800\udc00"`, false}, // high, then a pair
	} {
		if !json.Valid([]byte(tc.raw)) {
			t.Fatalf("%s is not JSON", tc.raw)
		}
		if got := pairedSurrogates(json.RawMessage(tc.raw)); got != tc.want {
			t.Errorf("pairedSurrogates(%s) = %v, want %v", tc.raw, got, tc.want)
		}
	}
}

func TestFractionDigits(t *testing.T) {
	for s, want := range map[string]int{
		"2030-01-01T00:00:00Z":            0,
		"2030-01-01T00:00:00.5Z":          1,
		"2030-01-01T00:00:00.123456789Z":  9,
		"2030-01-01T00:00:00.1234567891Z": 10,
		"2030-01-01T00:00:00.25+02:00":    2,
	} {
		if got := fractionDigits(s); got != want {
			t.Errorf("fractionDigits(%s) = %d, want %d", s, got, want)
		}
	}
}
