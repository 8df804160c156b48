package main

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// End-to-end tests of `tokend token show`, `update` and `rotate`, both on
// the database file itself and over a running server's admin socket.

func TestLifecycleCLI(t *testing.T) {
	t.Parallel()
	t.Run("no server", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "tokend.db")
		cliLifecycle(t, db, nil)
	})
	t.Run("server running", func(t *testing.T) {
		s := startServer(t, "")
		cliLifecycle(t, s.db, s)
		for _, m := range []string{"GetToken", "UpdateToken", "RotateToken"} {
			if !strings.Contains(s.logs.String(), `"method":"`+m+`"`) {
				t.Errorf("server did not log a %s call; did the CLI use the socket?", m)
			}
		}
	})
}

// cliJSON runs a `token ... --json` command that must succeed and returns
// its single JSON object.
func cliJSON(t *testing.T, args ...string) cliToken {
	t.Helper()
	out, errOut, err := cli(t, append(args, "--json")...)
	if err != nil {
		t.Fatalf("tokend %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return cliDecodeToken(t, out)
}

func cliKeys(tok cliToken) []string {
	var keys []string
	for k := range tok.raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// cliLifecycle runs show, update and rotate against db; with s, a server
// holds db and the secrets are checked over REST as they change.
func cliLifecycle(t *testing.T, db string, s *testServer) {
	alice := createToken(t, db, "alice", "cli token")
	bob := createToken(t, db, "bob", "bob's")
	id := fmt.Sprint(alice.ID)
	base := []string{"--db", db, "--user", "alice"}
	token := func(sub string, args ...string) []string {
		return append(append([]string{"token", sub}, base...), args...)
	}
	// works checks over REST, with a server, whether secret authenticates.
	works := func(t *testing.T, secret string, want bool) {
		t.Helper()
		if s == nil {
			return
		}
		id, code := whoAmI(t, s, secret)
		switch {
		case want && (code != http.StatusOK || id != alice.ID):
			t.Errorf("secret: status %d token %d, want 200 and token %d", code, id, alice.ID)
		case !want && code != http.StatusUnauthorized:
			t.Errorf("secret: status %d, want 401", code)
		}
	}

	t.Run("show", func(t *testing.T) {
		tok := cliJSON(t, token("show", id)...)
		if got := cliKeys(tok); !slices.Equal(got, tokenKeys) {
			t.Errorf("show --json keys = %v, want %v", got, tokenKeys)
		}
		if *tok.ID != alice.ID || *tok.Name != "cli token" || *tok.Status != "active" || string(tok.raw["allowed_ips"]) != "null" {
			t.Errorf("show --json = %v", tok)
		}
		out, errOut, err := cli(t, token("show", id)...)
		if err != nil {
			t.Fatalf("show: %v %s", err, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") || !strings.HasPrefix(lines[1], id+" ") || !strings.Contains(lines[1], "cli token") {
			t.Errorf("show text output = %q, want a header and one row for token %s", out, id)
		}
		// Flags may follow the id.
		if _, errOut, err := cli(t, "token", "show", id, "--db", db, "--user", "alice"); err != nil {
			t.Errorf("show ID --db ... --user ...: %v %s", err, errOut)
		}
	})

	t.Run("update", func(t *testing.T) {
		tok := cliJSON(t, token("update", "--name", "renamed", id)...)
		if *tok.Name != "renamed" || *tok.ID != alice.ID || string(tok.raw["allowed_ips"]) != "null" {
			t.Errorf("update --name = %v", tok)
		}
		if got := cliKeys(tok); !slices.Equal(got, tokenKeys) {
			t.Errorf("update --json keys = %v, want %v", got, tokenKeys)
		}
		tok = cliJSON(t, token("update", "--allowed-ip", "127.0.0.1", "--allowed-ip", "2001:DB8::/32", id)...)
		if *tok.Name != "renamed" || !slices.Equal(tok.AllowedIPs, []string{"127.0.0.1", "2001:db8::/32"}) {
			t.Errorf("update --allowed-ip = %v, want name kept and canonical IPs", tok)
		}
		works(t, alice.Secret, true) // 127.0.0.1 is allowed
		tok = cliJSON(t, token("update", "--allowed-ip", "192.0.2.0/24", id)...)
		if !slices.Equal(tok.AllowedIPs, []string{"192.0.2.0/24"}) {
			t.Errorf("--allowed-ip replaces the list: %q", tok.AllowedIPs)
		}
		works(t, alice.Secret, false)
		tok = cliJSON(t, token("update", "--clear-allowed-ips", id)...)
		if string(tok.raw["allowed_ips"]) != "null" || *tok.Name != "renamed" {
			t.Errorf("update --clear-allowed-ips = %v, want allowed_ips null", tok)
		}
		works(t, alice.Secret, true)
		out, errOut, err := cli(t, token("update", "--name", "both", "--allowed-ip", "127.0.0.0/8", id)...)
		if err != nil {
			t.Fatalf("update (text): %v %s", err, errOut)
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "both") || !strings.Contains(lines[1], "127.0.0.0/8") {
			t.Errorf("update text output = %q", out)
		}
		if shown := cliJSON(t, token("show", id)...); *shown.Name != "both" || !slices.Equal(shown.AllowedIPs, []string{"127.0.0.0/8"}) {
			t.Errorf("show after update = %v", shown)
		}
	})

	t.Run("rotate", func(t *testing.T) {
		out, errOut, err := cli(t, token("rotate", id)...)
		if err != nil {
			t.Fatalf("rotate: %v %s", err, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		fresh := lines[len(lines)-1]
		if !cliSecretPattern.MatchString(fresh) || fresh == alice.Secret {
			t.Fatalf("rotate text output does not end with a new secret: %q", out)
		}
		if want := fmt.Sprintf("Rotated token %s (both)", id); !strings.Contains(out, want) {
			t.Errorf("rotate text output %q does not say %q", out, want)
		}
		works(t, alice.Secret, false)
		works(t, fresh, true)

		start := time.Now()
		tok := cliJSON(t, token("rotate", "--grace-period", "1m", id)...)
		if got, want := cliKeys(tok), withTokenKeys("secret", "previous_secret_expires_at"); !slices.Equal(got, want) {
			t.Errorf("rotate --json keys = %v, want %v", got, want)
		}
		if tok.Secret == nil || !cliSecretPattern.MatchString(*tok.Secret) || *tok.Secret == fresh {
			t.Fatalf("rotate --json secret = %v", tok.Secret)
		}
		var prevAt string
		if err := jsonString(tok.raw["previous_secret_expires_at"], &prevAt); err != nil {
			t.Fatalf("previous_secret_expires_at: %v", err)
		}
		prev, err := time.Parse(time.RFC3339, prevAt)
		if err != nil || !rfc3339Seconds.MatchString(prevAt) || !near(prev, start.Add(time.Minute), 2*time.Second) {
			t.Errorf("previous_secret_expires_at = %q, want about a minute from now", prevAt)
		}
		if *tok.ID != alice.ID || *tok.Name != "both" || !slices.Equal(tok.AllowedIPs, []string{"127.0.0.0/8"}) || *tok.Status != "active" {
			t.Errorf("rotated token = %v, want id, name and restrictions kept", tok)
		}
		works(t, fresh, true)
		works(t, *tok.Secret, true)
		if s == nil {
			// What the CLI wrote alone, a server then honours.
			srv := startServer(t, db)
			for _, sec := range []string{fresh, *tok.Secret} {
				if got, code := whoAmI(t, srv, sec); code != 200 || got != alice.ID {
					t.Errorf("secret after offline rotation: status %d", code)
				}
			}
			if _, code := whoAmI(t, srv, alice.Secret); code != http.StatusUnauthorized {
				t.Errorf("secret rotated out offline: status %d, want 401", code)
			}
			if err := srv.stop(); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("errors change nothing", func(t *testing.T) {
		dead := createToken(t, db, "alice", "dead")
		cliRevoke(t, db, "alice", dead.ID)
		_, before := cliList(t, db, "alice")
		_, bobBefore := cliList(t, db, "bob")
		for _, tc := range []struct {
			name  string
			args  []string
			want  []string
			usage bool
		}{
			{"show unknown id", token("show", "999"), []string{"not found"}, false},
			{"show another user's token", token("show", fmt.Sprint(bob.ID)), []string{"not found"}, false},
			{"show for unknown user", []string{"token", "show", "--db", db, "--user", "nobody", id}, []string{"unknown user"}, false},
			{"update for unknown user", []string{"token", "update", "--db", db, "--user", "nobody", "--name", "x", id}, []string{"unknown user"}, false},
			{"rotate for unknown user", []string{"token", "rotate", "--db", db, "--user", "nobody", id}, []string{"unknown user"}, false},
			{"show non-numeric id", token("show", "abc"), []string{"abc"}, false},
			{"show without id", token("show"), []string{"token id"}, true},
			{"update unknown id", token("update", "--name", "x", "999"), []string{"not found"}, false},
			{"update another user's token", token("update", "--name", "x", fmt.Sprint(bob.ID)), []string{"not found"}, false},
			{"update nothing", token("update", id), []string{"nothing to update"}, true},
			{"update allowed-ip and clear", token("update", "--allowed-ip", "10.0.0.0/8", "--clear-allowed-ips", id), []string{"--allowed-ip", "--clear-allowed-ips"}, true},
			{"update empty name", token("update", "--name", "", id), []string{"name"}, false},
			{"update host bits", token("update", "--allowed-ip", "10.0.0.1/24", id), []string{"10.0.0.0/24"}, false},
			{"update bad IP and name", token("update", "--name", strings.Repeat("n", 101), "--allowed-ip", "nope", id), []string{"name", "nope"}, false},
			{"rotate unknown id", token("rotate", "999"), []string{"not found"}, false},
			{"rotate another user's token", token("rotate", fmt.Sprint(bob.ID)), []string{"not found"}, false},
			{"rotate revoked", token("rotate", fmt.Sprint(dead.ID)), []string{"revoked", "cannot be rotated"}, false},
			{"rotate negative grace", token("rotate", "--grace-period", "-1m", id), []string{"grace-period"}, true},
			// Whole seconds, not rounded: 300ms would be no grace at all.
			{"rotate sub-second grace", token("rotate", "--grace-period", "300ms", id), []string{"grace-period", "whole number of seconds"}, true},
			{"rotate fractional grace", token("rotate", "--grace-period", "1.5s", id), []string{"grace-period", "whole number of seconds"}, true},
			{"rotate grace beyond the maximum", token("rotate", "--grace-period", "25h", id), []string{"grace-period", "24h"}, false},
			{"rotate two ids", token("rotate", id, id), []string{"one token id"}, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := cliMustFail(t, tc.want, tc.args...)
				if got := errors.Is(err, errUsage); got != tc.usage {
					t.Errorf("usage error = %v, want %v (%v)", got, tc.usage, err)
				}
			})
		}
		if _, after := cliList(t, db, "alice"); after != before {
			t.Errorf("failed commands changed alice's tokens:\nbefore %s\nafter  %s", before, after)
		}
		if _, after := cliList(t, db, "bob"); after != bobBefore {
			t.Errorf("failed commands changed bob's tokens")
		}
		if _, _, err := cli(t, "token", "list", "--db", db, "--user", "nobody"); err == nil {
			t.Errorf("a failed command created user nobody")
		}
	})
}

func jsonString(raw []byte, s *string) error {
	if len(raw) < 2 || raw[0] != '"' {
		return fmt.Errorf("%s is not a JSON string", raw)
	}
	*s = string(raw[1 : len(raw)-1])
	return nil
}

func TestLifecycleCLIMissingDatabase(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "missing.db")
	for _, args := range [][]string{
		{"token", "show", "--db", db, "--user", "alice", "1"},
		{"token", "update", "--db", db, "--user", "alice", "--name", "x", "1"},
		{"token", "rotate", "--db", db, "--user", "alice", "1"},
	} {
		cliMustFail(t, []string{db}, args...)
		cliAssertNotExist(t, db)
		cliAssertNotExist(t, socketPath(db))
	}
}

func TestVersion(t *testing.T) {
	out, _, err := cli(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "tokend ") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("tokend version = %q, want tokend, a version and %s", out, runtime.Version())
	}
}
