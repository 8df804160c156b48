package secret

import (
	"bytes"
	"strings"
	"testing"
)

// TestSealOpen checks Seal's promises: the sealed form opens with the same
// key and context, and only with them; it does not contain the secret;
// any change to it, or a truncation, makes it unopenable; and sealing the
// same secret twice gives different bytes (a fresh nonce each time).
func TestSealOpen(t *testing.T) {
	sec := mustNew(t)
	const key, ctx = "0f8fad5b-d9cb-469f-a165-70867728950e", "alice"
	sealed, err := Seal(sec, key, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Open(sealed, key, ctx); err != nil || got != sec {
		t.Fatalf("Open(Seal(s)) = %q, %v; want the secret", got, err)
	}
	if bytes.Contains(sealed, []byte(sec)) || bytes.Contains(sealed, []byte(sec[len(Prefix):])) {
		t.Error("the sealed form contains the secret")
	}
	again, err := Seal(sec, key, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again, sealed) {
		t.Error("sealing twice gave the same bytes: the nonce is not fresh")
	}
	for name, tc := range map[string]struct {
		sealed   []byte
		key, ctx string
	}{
		"other key":          {sealed, key + "x", ctx},
		"other context":      {sealed, key, "bob"},
		"empty key":          {sealed, "", ctx},
		"flipped first byte": {flip(sealed, 0), key, ctx},
		"flipped last byte":  {flip(sealed, len(sealed)-1), key, ctx},
		"truncated":          {sealed[:len(sealed)-1], key, ctx},
		"shorter than nonce": {sealed[:5], key, ctx},
		"empty":              {nil, key, ctx},
	} {
		got, err := Open(tc.sealed, tc.key, tc.ctx)
		if err == nil || got != "" {
			t.Errorf("%s: Open = %q, %v; want an error and nothing", name, got, err)
		}
		if err != nil && strings.Contains(err.Error(), sec) {
			t.Errorf("%s: the error carries the secret", name)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}
