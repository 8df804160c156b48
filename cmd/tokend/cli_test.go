package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/testutil"
)

// cliToken is one token as `tokend token ... --json` prints it; pointer
// fields tell null from absent.
type cliToken struct {
	ID         *int64   `json:"id"`
	Name       *string  `json:"name"`
	Status     *string  `json:"status"`
	LastUsedAt *string  `json:"last_used_at"`
	UsageCount *int64   `json:"usage_count"`
	ExpiresAt  *string  `json:"expires_at"`
	CreatedAt  *string  `json:"created_at"`
	AllowedIPs []string `json:"allowed_ips"`
	Secret     *string  `json:"secret"`
	raw        cliRawMap
}

type cliRawMap map[string]json.RawMessage

// String shows the token as JSON in failure messages.
func (c cliToken) String() string {
	b, err := json.Marshal(c)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// cliDecodeToken parses one token object, keeping its raw fields too.
func cliDecodeToken(t *testing.T, out string) cliToken {
	t.Helper()
	var tok cliToken
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		t.Fatalf("output is not a JSON token: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &tok.raw); err != nil {
		t.Fatalf("output is not a JSON object: %v\n%s", err, out)
	}
	return tok
}

// cliList runs `token list --json` and returns the tokens and the raw
// output, failing the test on error.
func cliList(t *testing.T, db, user string) ([]cliToken, string) {
	t.Helper()
	out, errOut, err := cli(t, "token", "list", "--db", db, "--user", user, "--json")
	if err != nil {
		t.Fatalf("token list --user %s: %v\nstderr: %s", user, err, errOut)
	}
	var toks []cliToken
	if err := json.Unmarshal([]byte(out), &toks); err != nil {
		t.Fatalf("token list output is not a JSON array: %v\n%s", err, out)
	}
	return toks, out
}

// cliRevoke runs `token revoke --json` and returns the revoked token.
func cliRevoke(t *testing.T, db, user string, id int64) cliToken {
	t.Helper()
	out, errOut, err := cli(t, "token", "revoke", "--db", db, "--user", user, "--json", fmt.Sprint(id))
	if err != nil {
		t.Fatalf("token revoke %d: %v\nstderr: %s", id, err, errOut)
	}
	return cliDecodeToken(t, out)
}

// cliMustFail runs a command that must fail with a one-line error that
// mentions every one of want (case-insensitively), and print nothing on
// stdout.
func cliMustFail(t *testing.T, want []string, args ...string) error {
	t.Helper()
	out, errOut, err := cli(t, args...)
	if err == nil {
		t.Fatalf("tokend %s succeeded, want an error\nstdout: %s", strings.Join(args, " "), out)
	}
	msg := err.Error()
	if msg == "" || strings.Contains(msg, "\n") {
		t.Errorf("tokend %s: error %q is not one line", strings.Join(args, " "), msg)
	}
	for _, w := range want {
		if !strings.Contains(strings.ToLower(msg), strings.ToLower(w)) {
			t.Errorf("tokend %s: error %q does not mention %q", strings.Join(args, " "), msg, w)
		}
	}
	if out != "" {
		t.Errorf("tokend %s: printed %q on stdout despite failing", strings.Join(args, " "), out)
	}
	_ = errOut
	return err
}

func cliAssertNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("%s exists; the command must not create it", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("checking %s: %v", path, err)
	}
}

// cliGetSelf fetches token id with its own secret over REST.
func cliGetSelf(t *testing.T, s *testServer, id int64, secret string) (int, map[string]any) {
	t.Helper()
	resp, body := s.get(t, tokenPath(id), bearer(secret))
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	m := decodeObject(t, body)
	data, ok := m["data"].(map[string]any)
	if !ok {
		t.Fatalf("response has no data object: %s", body)
	}
	return resp.StatusCode, data
}

var cliSecretPattern = regexp.MustCompile(`^tkd_[0-9A-Za-z]{38}$`)

func TestCLIWithoutServer(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "tokend.db")

	// Text output: id and secret.
	out, errOut, err := cli(t, "token", "create", "--db", db, "--user", "alice", "--name", "laptop")
	if err != nil {
		t.Fatalf("create: %v\nstderr: %s", err, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	textSecret := lines[len(lines)-1]
	if !cliSecretPattern.MatchString(textSecret) {
		t.Fatalf("text output does not end with a secret: %q", out)
	}
	if !strings.Contains(out, "Created token 1 (laptop)") {
		t.Errorf("text output does not name the token id 1: %q", out)
	}
	if _, err := os.Stat(socketPath(db)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a CLI command without a server left %s behind (err %v)", socketPath(db), err)
	}
	fi, err := os.Stat(db)
	if err != nil {
		t.Fatalf("create did not create the database: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("database mode = %v, want 0600", perm)
	}

	// JSON output: the REST fields plus the secret.
	out, errOut, err = cli(t, "token", "create", "--db", db, "--user", "alice", "--name", "CI Deployments",
		"--json", "--expires-in", "720h", "--allowed-ip", "10.0.0.0/8", "--allowed-ip", "192.168.1.5")
	if err != nil {
		t.Fatalf("create --json: %v\nstderr: %s", err, errOut)
	}
	created := cliDecodeToken(t, out)
	for _, k := range []string{"id", "name", "status", "last_used_at", "usage_count", "expires_at", "created_at", "allowed_ips", "secret"} {
		if _, ok := created.raw[k]; !ok {
			t.Errorf("create --json lacks %q: %s", k, out)
		}
	}
	if created.ID == nil || *created.ID != 2 {
		t.Errorf("id = %v, want 2", created.ID)
	}
	if created.Secret == nil || !cliSecretPattern.MatchString(*created.Secret) {
		t.Errorf("secret = %v, want a tkd_ secret", created.Secret)
	} else if *created.Secret == textSecret {
		t.Errorf("two tokens got the same secret")
	}
	if created.Status == nil || *created.Status != "active" {
		t.Errorf("status = %v, want active", created.Status)
	}
	if created.Name == nil || *created.Name != "CI Deployments" {
		t.Errorf("name = %v", created.Name)
	}
	if !reflect.DeepEqual(created.AllowedIPs, []string{"10.0.0.0/8", "192.168.1.5"}) {
		t.Errorf("allowed_ips = %q", created.AllowedIPs)
	}
	if string(created.raw["last_used_at"]) != "null" {
		t.Errorf("last_used_at = %s, want null", created.raw["last_used_at"])
	}
	if string(created.raw["usage_count"]) != "0" {
		t.Errorf("usage_count = %s, want the number 0", created.raw["usage_count"])
	}
	if created.ExpiresAt == nil || created.CreatedAt == nil {
		t.Fatalf("expires_at or created_at missing: %s", out)
	}
	exp, err1 := time.Parse(time.RFC3339, *created.ExpiresAt)
	cre, err2 := time.Parse(time.RFC3339, *created.CreatedAt)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad timestamps: %v %v", err1, err2)
	}
	if d := exp.Sub(cre); d < 720*time.Hour-time.Second || d > 720*time.Hour+time.Second {
		t.Errorf("expires_at - created_at = %v, want 720h", d)
	}

	// A third token, and one for someone else.
	third := createToken(t, db, "alice", "third")
	bobs := createToken(t, db, "bob", "bob's")

	toks, _ := cliList(t, db, "alice")
	var ids []int64
	for _, tk := range toks {
		ids = append(ids, *tk.ID)
	}
	if want := []int64{third.ID, 2, 1}; !reflect.DeepEqual(ids, want) {
		t.Errorf("list ids = %v, want newest first %v", ids, want)
	}
	for _, tk := range toks {
		if tk.Secret != nil {
			t.Errorf("list shows a secret for token %d", *tk.ID)
		}
	}
	if bt, _ := cliList(t, db, "bob"); len(bt) != 1 || *bt[0].ID != bobs.ID {
		t.Errorf("bob's list = %+v, want only token %d", bt, bobs.ID)
	}

	// Revoke, and revoke again.
	rev := cliRevoke(t, db, "alice", third.ID)
	if rev.Status == nil || *rev.Status != "revoked" || *rev.ID != third.ID {
		t.Errorf("revoke returned %+v, want token %d revoked", rev, third.ID)
	}
	again := cliRevoke(t, db, "alice", third.ID)
	if again.Status == nil || *again.Status != "revoked" {
		t.Errorf("second revoke returned status %v", again.Status)
	}
	out, errOut, err = cli(t, "token", "revoke", "--db", db, "--user", "alice", fmt.Sprint(third.ID))
	if err != nil {
		t.Fatalf("third revoke (text): %v %s", err, errOut)
	}
	if want := fmt.Sprintf("Revoked token %d (third).", third.ID); !strings.Contains(out, want) {
		t.Errorf("revoke text output = %q, want %q", out, want)
	}
	// Flags may follow the id.
	if _, errOut, err := cli(t, "token", "revoke", fmt.Sprint(third.ID), "--db", db, "--user", "alice"); err != nil {
		t.Errorf("revoke ID --db ... --user ...: %v %s", err, errOut)
	}
	toks, _ = cliList(t, db, "alice")
	for _, tk := range toks {
		want := "active"
		if *tk.ID == third.ID {
			want = "revoked"
		}
		if *tk.Status != want {
			t.Errorf("token %d status = %s, want %s", *tk.ID, *tk.Status, want)
		}
	}

	// Text list shows all three.
	out, _, err = cli(t, "token", "list", "--db", db, "--user", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(strings.Split(strings.TrimSpace(out), "\n")); n != 4 {
		t.Errorf("text list has %d lines, want header + 3:\n%s", n, out)
	}

	// What the CLI wrote without a server, a server then serves.
	s := startServer(t, db)
	if code, data := cliGetSelf(t, s, 1, textSecret); code != http.StatusOK || data["name"] != "laptop" {
		t.Errorf("secret printed by text create: status %d data %v", code, data)
	}
	if code, _ := cliGetSelf(t, s, third.ID, third.Secret); code != http.StatusUnauthorized {
		t.Errorf("token revoked without a server: status %d, want 401", code)
	}
}

func TestCLIWithRunningServer(t *testing.T) {
	s := startServer(t, "")

	// The socket is owner-only and really a socket; the database 0600.
	fi, err := os.Stat(socketPath(s.db))
	if err != nil {
		t.Fatalf("admin socket: %v", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("%s is %v, not a socket", socketPath(s.db), fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("admin socket mode = %v, want 0600", perm)
	}
	if s.addrs.Admin != socketPath(s.db) {
		t.Errorf("admin socket at %q, want %q", s.addrs.Admin, socketPath(s.db))
	}
	fi, err = os.Stat(s.db)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("database mode = %v, want 0600", perm)
	}

	// Create goes over the socket (the server holds the file's lock, so
	// nothing else could succeed) and authenticates at once.
	tok := createToken(t, s.db, "alice", "live")
	if !strings.Contains(s.logs.String(), `"method":"CreateToken"`) {
		t.Errorf("server did not log the CreateToken call; did the CLI use the socket?\n%s", s.logs)
	}
	code, data := cliGetSelf(t, s, tok.ID, tok.Secret)
	if code != http.StatusOK {
		t.Fatalf("fresh token: status %d, want 200", code)
	}
	if data["status"] != "active" || data["usage_count"] != json.Number("1") {
		t.Errorf("fresh token after one use: %v", data)
	}
	other := createToken(t, s.db, "alice", "other")

	toks, _ := cliList(t, s.db, "alice")
	if len(toks) != 2 || *toks[0].ID != other.ID || *toks[1].ID != tok.ID {
		t.Fatalf("list over socket = %+v, want [%d %d]", toks, other.ID, tok.ID)
	}
	if *toks[1].UsageCount != 1 || toks[1].LastUsedAt == nil {
		t.Errorf("list over socket does not show the use: %+v", toks[1])
	}

	// Revoke takes effect on the very next request.
	rev := cliRevoke(t, s.db, "alice", tok.ID)
	if *rev.Status != "revoked" {
		t.Errorf("revoke over socket: status %s", *rev.Status)
	}
	if code, _ := cliGetSelf(t, s, tok.ID, tok.Secret); code != http.StatusUnauthorized {
		t.Errorf("revoked token: status %d, want 401", code)
	}
	if again := cliRevoke(t, s.db, "alice", tok.ID); *again.Status != "revoked" {
		t.Errorf("revoking again over socket: status %s", *again.Status)
	}
	if code, _ := cliGetSelf(t, s, other.ID, other.Secret); code != http.StatusOK {
		t.Errorf("revoking one token disturbed another: status %d", code)
	}
	if !strings.Contains(s.logs.String(), `"method":"RevokeToken"`) {
		t.Errorf("server did not log the RevokeToken call")
	}

	// Errors over the socket are as clear as without a server.
	cliMustFail(t, []string{"not found"}, "token", "revoke", "--db", s.db, "--user", "alice", "999")
	cliMustFail(t, []string{"unknown user"}, "token", "list", "--db", s.db, "--user", "nobody")
	cliMustFail(t, []string{"unknown user"}, "token", "revoke", "--db", s.db, "--user", "nobody", fmt.Sprint(other.ID))
}

// TestCLISocketPathIsNotAURL: the CLI reaches a running server whose
// database path has characters a URL would read ('#', '?', '%'), rather
// than dialing a path cut short or changed, with no way to fall back to the
// file the server holds.
func TestCLISocketPathIsNotAURL(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a#b?c%41d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, filepath.Join(dir, "t.db"))
	tok := createToken(t, s.db, "alice", "odd path")
	if !strings.Contains(s.logs.String(), `"method":"CreateToken"`) {
		t.Fatalf("the create did not reach the running server over its socket\n%s", s.logs)
	}
	if toks, _ := cliList(t, s.db, "alice"); len(toks) != 1 || *toks[0].ID != tok.ID {
		t.Errorf("list over the socket = %+v, want token %d", toks, tok.ID)
	}
}

// TestCLIRefusesSymlinkedSocket: a symlink where a database's admin socket
// belongs (planted in a shared directory, say) is not followed to whatever
// server is at its end; the command fails, naming the path.
func TestCLIRefusesSymlinkedSocket(t *testing.T) {
	other := startServer(t, "")
	createToken(t, other.db, "alice", "elsewhere")
	db := filepath.Join(t.TempDir(), "tokend.db")
	if _, _, err := cli(t, "token", "create", "--db", db, "--user", "alice", "--name", "here"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(socketPath(other.db), socketPath(db)); err != nil {
		t.Fatal(err)
	}
	cliMustFail(t, []string{socketPath(db), "not a socket"}, "token", "revoke", "--db", db, "--user", "alice", "1")
	if strings.Contains(other.logs.String(), `"method":"RevokeToken"`) {
		t.Errorf("the revoke reached the server the symlink points to")
	}
}

// cliBadCreates are create invocations that must fail, with what their
// error must mention. Each lacks only --db.
var cliBadCreates = []struct {
	name string
	args []string
	want []string
}{
	{"invalid IP", []string{"--user", "alice", "--name", "x", "--allowed-ip", "10.0.0.300"}, []string{"allowed_ips", "10.0.0.300"}},
	{"CIDR with host bits", []string{"--user", "alice", "--name", "x", "--allowed-ip", "10.0.0.1/24"}, []string{"allowed_ips", "10.0.0.1/24", "host bits"}},
	{"one bad IP among good", []string{"--user", "alice", "--name", "x", "--allowed-ip", "10.0.0.0/8", "--allowed-ip", "nonsense"}, []string{"nonsense"}},
	{"empty name", []string{"--user", "alice", "--name", ""}, []string{"name"}},
	{"no name", []string{"--user", "alice"}, []string{"name"}},
	{"blank name", []string{"--user", "alice", "--name", "   "}, []string{"name", "blank"}},
	{"101-character name", []string{"--user", "alice", "--name", strings.Repeat("n", 101)}, []string{"name", "100"}},
	{"zero expires-in", []string{"--user", "alice", "--name", "x", "--expires-in", "0s"}, []string{"expires-in"}},
	{"negative expires-in", []string{"--user", "alice", "--name", "x", "--expires-in", "-5m"}, []string{"expires-in"}},
	{"invalid user", []string{"--user", "a b", "--name", "x"}, []string{"user"}},
	{"no user", []string{"--name", "x"}, []string{"user"}},
}

func TestCLIBadInputCreatesNoDatabase(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "missing.db")
	for _, c := range cliBadCreates {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"token", "create", "--db", db, "--json"}, c.args...)
			cliMustFail(t, c.want, args...)
			cliAssertNotExist(t, db)
			cliAssertNotExist(t, socketPath(db))
		})
	}
	t.Run("list on missing db", func(t *testing.T) {
		cliMustFail(t, []string{db}, "token", "list", "--db", db, "--user", "alice")
		cliAssertNotExist(t, db)
	})
	t.Run("revoke on missing db", func(t *testing.T) {
		cliMustFail(t, []string{db}, "token", "revoke", "--db", db, "--user", "alice", "1")
		cliAssertNotExist(t, db)
	})
	t.Run("non-numeric revoke id on missing db", func(t *testing.T) {
		cliMustFail(t, []string{"abc"}, "token", "revoke", "--db", db, "--user", "alice", "abc")
		cliAssertNotExist(t, db)
	})
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("failed commands left files in %s: %v %v", dir, entries, err)
	}
}

// cliBadInputExistingDB checks that no bad command changes alice's tokens,
// with or without a server holding db.
func cliBadInputExistingDB(t *testing.T, db string, alice, bob createdToken) {
	_, before := cliList(t, db, "alice")
	_, bobBefore := cliList(t, db, "bob")
	for _, c := range cliBadCreates {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"token", "create", "--db", db, "--json"}, c.args...)
			cliMustFail(t, c.want, args...)
		})
	}
	bad := []struct {
		name string
		args []string
		want []string
	}{
		{"revoke unknown id", []string{"token", "revoke", "--db", db, "--user", "alice", "999"}, []string{"not found"}},
		{"revoke someone else's token", []string{"token", "revoke", "--db", db, "--user", "bob", fmt.Sprint(alice.ID)}, []string{"not found"}},
		{"revoke for unknown user", []string{"token", "revoke", "--db", db, "--user", "nobody", fmt.Sprint(alice.ID)}, []string{"unknown"}},
		{"revoke non-numeric id", []string{"token", "revoke", "--db", db, "--user", "alice", "abc"}, []string{"abc"}},
		{"revoke id zero", []string{"token", "revoke", "--db", db, "--user", "alice", "0"}, []string{"id"}},
		{"revoke invalid user", []string{"token", "revoke", "--db", db, "--user", "a b", fmt.Sprint(alice.ID)}, []string{"user"}},
		{"list unknown user", []string{"token", "list", "--db", db, "--user", "nobody"}, []string{"unknown"}},
		{"list invalid user", []string{"token", "list", "--db", db, "--user", "a b"}, []string{"user"}},
		{"list no user", []string{"token", "list", "--db", db}, []string{"user"}},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) { cliMustFail(t, c.want, c.args...) })
	}
	if _, after := cliList(t, db, "alice"); after != before {
		t.Errorf("alice's tokens changed after bad input:\nbefore %s\nafter  %s", before, after)
	}
	if _, after := cliList(t, db, "bob"); after != bobBefore {
		t.Errorf("bob's tokens changed after bad input:\nbefore %s\nafter  %s", bobBefore, after)
	}
	if _, _, err := cli(t, "token", "list", "--db", db, "--user", "nobody"); err == nil {
		t.Errorf("a failed command created user nobody")
	}
}

func TestCLIBadInputWritesNothing(t *testing.T) {
	t.Run("no server", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "tokend.db")
		alice := createToken(t, db, "alice", "keep")
		bob := createToken(t, db, "bob", "keep too")
		cliBadInputExistingDB(t, db, alice, bob)
	})
	t.Run("server running", func(t *testing.T) {
		s := startServer(t, "")
		alice := createToken(t, s.db, "alice", "keep")
		bob := createToken(t, s.db, "bob", "keep too")
		cliBadInputExistingDB(t, s.db, alice, bob)
		if code, _ := cliGetSelf(t, s, alice.ID, alice.Secret); code != http.StatusOK {
			t.Errorf("alice's token after bad input: status %d, want 200", code)
		}
	})
}

func TestCLIUsageErrors(t *testing.T) {
	db := filepath.Join(t.TempDir(), "tokend.db")
	cases := [][]string{
		{},
		{"frobnicate"},
		{"token"},
		{"token", "frobnicate", "--db", db},
		{"token", "revoke", "--db", db, "--user", "alice"},
		{"token", "revoke", "--db", db, "--user", "alice", "1", "2"},
		{"token", "list", "--db", db, "--user", "alice", "extra"},
		{"token", "create", "--db", db, "--user", "alice", "--name", "x", "extra"},
		{"token", "create", "--db", db, "--user", "alice", "--name", "x", "--bogus"},
		{"token", "create", "--db", db, "--user", "alice", "--name", "x", "--expires-in", "soon"},
		{"serve", "--db", db, "extra"},
		{"serve", "--db", db, "--log-format", "xml"},
		{"serve", "--db", db, "--shutdown-timeout", "0s"},
	}
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			_, _, err := cli(t, args...)
			if !errors.Is(err, errUsage) {
				t.Errorf("tokend %q: err = %v, want a usage error", args, err)
			}
		})
	}
	cliAssertNotExist(t, db)
	cliAssertNotExist(t, socketPath(db))

	for _, args := range [][]string{{"help"}, {"token", "--help"}, {"token", "help"}, {"token", "-h"}} {
		out, _, err := cli(t, args...)
		if err != nil || !strings.Contains(out, "tokend token create") {
			t.Errorf("%v: err %v, output %q", args, err, out)
		}
	}
	// Each command's -h, which the usage text points to, lists its flags
	// and succeeds (main exits 0).
	for _, args := range [][]string{{"serve", "-h"}, {"token", "create", "-h"}} {
		_, errOut, err := cli(t, args...)
		if err != nil || !strings.Contains(errOut, "-db") {
			t.Errorf("%v: err %v, flags listed: %q", args, err, errOut)
		}
	}
}

func TestCLIRestartPersistsUsage(t *testing.T) {
	db := filepath.Join(t.TempDir(), "tokend.db")
	s1 := startServer(t, db)
	tok := createToken(t, db, "alice", "persistent")
	for i := 0; i < 3; i++ {
		if code, _ := cliGetSelf(t, s1, tok.ID, tok.Secret); code != http.StatusOK {
			t.Fatalf("request %d: status %d", i+1, code)
		}
	}
	if err := s1.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !strings.Contains(s1.logs.String(), "tokend stopped") {
		t.Errorf("stopped server did not log \"tokend stopped\":\n%s", s1.logs)
	}
	cliAssertNotExist(t, socketPath(db))

	// Between servers the CLI reads the file itself.
	toks, out := cliList(t, db, "alice")
	if len(toks) != 1 || *toks[0].UsageCount != 3 || toks[0].LastUsedAt == nil {
		t.Errorf("list between servers = %s, want usage_count 3 and last_used_at set", out)
	}

	s2 := startServer(t, db)
	code, data := cliGetSelf(t, s2, tok.ID, tok.Secret)
	if code != http.StatusOK {
		t.Fatalf("token after restart: status %d, want 200", code)
	}
	if got := data["usage_count"]; got != json.Number("4") {
		t.Errorf("usage_count after restart = %#v, want the number 4", got)
	}
	last, ok := data["last_used_at"].(string)
	if !ok {
		t.Fatalf("last_used_at = %#v, want a timestamp", data["last_used_at"])
	}
	if lt, err := time.Parse(time.RFC3339, last); err != nil || time.Since(lt) > time.Minute {
		t.Errorf("last_used_at = %q (%v), want about now", last, err)
	}
	if data["name"] != "persistent" || data["status"] != "active" {
		t.Errorf("token after restart: %v", data)
	}
}

func TestCLIStaleSocket(t *testing.T) {
	db := filepath.Join(t.TempDir(), "tokend.db")
	// A socket left by a crashed server: nothing listens on it.
	ln, err := net.Listen("unix", socketPath(db))
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	tok := createToken(t, db, "alice", "after crash")
	s := startServer(t, db)
	if code, _ := cliGetSelf(t, s, tok.ID, tok.Secret); code != http.StatusOK {
		t.Errorf("token created past a stale socket: status %d", code)
	}
	// And the new server's socket works.
	if toks, _ := cliList(t, db, "alice"); len(toks) != 1 || *toks[0].UsageCount != 1 {
		t.Errorf("list through the new server's socket = %+v", toks)
	}
}

// With the file locked but no server on the socket (a server starting up,
// or some other process), the CLI gives up within its lock timeout, says
// why, and writes nothing.
func TestCLIDatabaseLockedWithoutServer(t *testing.T) {
	db := filepath.Join(t.TempDir(), "tokend.db")
	createToken(t, db, "alice", "existing")
	_, before := cliList(t, db, "alice")
	st, err := store.Open(db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cliMustFail(t, []string{"in use", socketPath(db)}, "token", "create", "--db", db, "--user", "alice", "--name", "blocked", "--json")
	if elapsed := time.Since(start); elapsed >= 5*time.Second {
		t.Errorf("create on a locked database took %v, want < 5s", elapsed)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, after := cliList(t, db, "alice"); after != before {
		t.Errorf("a refused create changed the tokens:\nbefore %s\nafter  %s", before, after)
	}
}

func TestCLIDatabaseLock(t *testing.T) {
	s := startServer(t, "")
	tok := createToken(t, s.db, "alice", "locked")

	var buf testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	err := runServe(ctx, []string{"--db", s.db, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"},
		func(string) string { return "" }, &buf, nil)
	elapsed := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second serve on a locked database: err = %v, want one mentioning \"in use\"", err)
	}
	if elapsed >= 5*time.Second {
		t.Errorf("second serve took %v to give up, want < 5s", elapsed)
	}
	if strings.Contains(buf.String(), "tokend listening") {
		t.Errorf("second serve started listening:\n%s", buf.String())
	}

	// The first server is undisturbed: REST, its socket and its file.
	if code, _ := cliGetSelf(t, s, tok.ID, tok.Secret); code != http.StatusOK {
		t.Errorf("running server after a refused second serve: status %d", code)
	}
	if fi, err := os.Stat(socketPath(s.db)); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Errorf("running server's socket after a refused second serve: %v", err)
	}
	if toks, _ := cliList(t, s.db, "alice"); len(toks) != 1 || *toks[0].UsageCount != 1 {
		t.Errorf("list after a refused second serve = %+v", toks)
	}
}

func TestCLIServeEnvironment(t *testing.T) {
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	var stderr bytes.Buffer

	t.Run("defaults", func(t *testing.T) {
		cfg, err := parseServe(nil, env(nil), &stderr)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.DB != "tokend.db" || cfg.HTTPAddr != "127.0.0.1:8080" || cfg.GRPCAddr != "127.0.0.1:9090" || len(cfg.TrustedProxies) != 0 {
			t.Errorf("defaults = %+v", cfg)
		}
	})

	vars := map[string]string{
		"TOKEND_DB":              "/srv/env.db",
		"TOKEND_HTTP_ADDR":       "127.0.0.1:18080",
		"TOKEND_GRPC_ADDR":       "127.0.0.1:19090",
		"TOKEND_TRUSTED_PROXIES": "10.0.0.0/8, 2001:db8::/32",
	}
	t.Run("environment", func(t *testing.T) {
		cfg, err := parseServe(nil, env(vars), &stderr)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.DB != "/srv/env.db" || cfg.HTTPAddr != "127.0.0.1:18080" || cfg.GRPCAddr != "127.0.0.1:19090" {
			t.Errorf("config from environment = %+v", cfg)
		}
		want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
		if !reflect.DeepEqual(cfg.TrustedProxies, want) {
			t.Errorf("trusted proxies = %v, want %v", cfg.TrustedProxies, want)
		}
	})
	t.Run("flags override environment", func(t *testing.T) {
		cfg, err := parseServe([]string{"--db", "flag.db", "--http-addr", "127.0.0.1:1", "--grpc-addr", "127.0.0.1:2",
			"--trusted-proxy", "172.16.0.0/12"}, env(vars), &stderr)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.DB != "flag.db" || cfg.HTTPAddr != "127.0.0.1:1" || cfg.GRPCAddr != "127.0.0.1:2" {
			t.Errorf("config with flags = %+v", cfg)
		}
		if want := []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}; !reflect.DeepEqual(cfg.TrustedProxies, want) {
			t.Errorf("trusted proxies = %v, want only the flag's %v", cfg.TrustedProxies, want)
		}
	})
	t.Run("IPv4-mapped trusted proxy", func(t *testing.T) {
		cfg, err := parseServe([]string{"--trusted-proxy", "::ffff:10.0.0.0/104"}, env(nil), &stderr)
		if err != nil {
			t.Fatal(err)
		}
		if want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}; !reflect.DeepEqual(cfg.TrustedProxies, want) {
			t.Errorf("trusted proxies = %v, want the IPv4 range %v, which unmapped peers can match", cfg.TrustedProxies, want)
		}
	})
	for _, bad := range []string{"10.0.0.1/8", "nonsense", "10.0.0.1"} {
		t.Run("bad trusted proxy "+bad, func(t *testing.T) {
			_, err := parseServe([]string{"--trusted-proxy", bad}, env(nil), &stderr)
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), bad) {
				t.Errorf("--trusted-proxy %s: err = %v, want a usage error naming it", bad, err)
			}
			_, err = parseServe(nil, env(map[string]string{"TOKEND_TRUSTED_PROXIES": "10.0.0.0/8," + bad}), &stderr)
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), bad) {
				t.Errorf("TOKEND_TRUSTED_PROXIES with %s: err = %v, want a usage error naming it", bad, err)
			}
		})
	}
	t.Run("host bits suggestion", func(t *testing.T) {
		_, err := parseServe([]string{"--trusted-proxy", "10.0.0.1/8"}, env(nil), &stderr)
		if err == nil || !strings.Contains(err.Error(), "10.0.0.0/8") {
			t.Errorf("err = %v, want it to suggest 10.0.0.0/8", err)
		}
	})

	t.Run("runServe uses the environment", func(t *testing.T) {
		dir := t.TempDir()
		db := filepath.Join(dir, "from-env.db")
		getenv := env(map[string]string{
			"TOKEND_DB":        db,
			"TOKEND_HTTP_ADDR": "127.0.0.1:0",
			"TOKEND_GRPC_ADDR": "127.0.0.1:0",
		})
		var logs testutil.SyncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ready := make(chan listening, 1)
		done := make(chan error, 1)
		go func() { done <- runServe(ctx, nil, getenv, &logs, func(l listening) { ready <- l }) }()
		var addrs listening
		select {
		case addrs = <-ready:
		case err := <-done:
			t.Fatalf("serve from environment failed: %v\n%s", err, logs.String())
		case <-time.After(10 * time.Second):
			t.Fatalf("serve from environment did not start\n%s", logs.String())
		}
		if addrs.Admin != socketPath(db) {
			t.Errorf("admin socket = %q, want %q", addrs.Admin, socketPath(db))
		}
		for _, a := range []string{addrs.HTTP, addrs.GRPC} {
			ap, err := netip.ParseAddrPort(a)
			if err != nil || ap.Addr() != netip.MustParseAddr("127.0.0.1") || ap.Port() == 0 {
				t.Errorf("listening on %q, want 127.0.0.1 with a kernel-chosen port", a)
			}
		}
		if _, err := os.Stat(db); err != nil {
			t.Errorf("TOKEND_DB was not used: %v", err)
		}
		// It serves: REST on the HTTP address, the CLI on the socket.
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addrs.HTTP + "/api/v1/me/tokens/1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("unauthenticated GET: status %d, want 401", resp.StatusCode)
		}
		tok := createToken(t, db, "alice", "env")
		if !strings.Contains(logs.String(), `"method":"CreateToken"`) {
			t.Errorf("token %d was not created through the server's socket", tok.ID)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("serve did not stop")
		}
	})
}

// A server told to stop the moment it is listening (a SIGTERM during
// start-up) must still stop cleanly: nil error, "tokend stopped", socket
// removed. Several rounds, since the window is a race.
func TestCLIServeStopRightAfterStart(t *testing.T) {
	for i := 0; i < 25; i++ {
		db := filepath.Join(t.TempDir(), "tokend.db")
		var logs testutil.SyncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- runServe(ctx, []string{"--db", db, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"},
				func(string) string { return "" }, &logs, func(listening) { cancel() })
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("round %d: serve stopped right after start returned %v, want nil", i, err)
			} else if !strings.Contains(logs.String(), "tokend stopped") {
				t.Errorf("round %d: no \"tokend stopped\" in log:\n%s", i, logs.String())
			}
		case <-time.After(15 * time.Second):
			cancel()
			t.Fatalf("round %d: serve did not stop within 15s", i)
		}
		cancel()
		cliAssertNotExist(t, socketPath(db))
	}
}

// TestCLIWithoutServerAppliesEnvLimits: opening the file itself, the token
// commands apply the limits the environment sets, as a server started with
// that environment would, not the defaults; and a bad value is refused.
func TestCLIWithoutServerAppliesEnvLimits(t *testing.T) {
	db := filepath.Join(t.TempDir(), "tokend.db")
	env := map[string]string{"TOKEND_MAX_TOKENS_PER_USER": "1", "TOKEND_MAX_TOKEN_LIFETIME": "1h"}
	runEnv := func(args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		err := run(ctx, args, func(k string) string { return env[k] }, &stdout, &stderr)
		return stdout.String() + stderr.String(), err
	}
	if out, err := runEnv("token", "create", "--db", db, "--user", "alice", "--name", "one"); err != nil {
		t.Fatalf("first create: %v\n%s", err, out)
	}
	if out, err := runEnv("token", "create", "--db", db, "--user", "alice", "--name", "two"); err == nil || !strings.Contains(out+err.Error(), "limit of 1") {
		t.Errorf("second create under TOKEND_MAX_TOKENS_PER_USER=1: %v\n%s; want the limit refusal", err, out)
	}
	if out, err := runEnv("token", "create", "--db", db, "--user", "bob", "--name", "long", "--expires-in", "2h"); err == nil || !strings.Contains(out+err.Error(), "at most 1h0m0s") {
		t.Errorf("create beyond TOKEND_MAX_TOKEN_LIFETIME=1h: %v\n%s; want the lifetime refusal", err, out)
	}
	env["TOKEND_MAX_TOKENS_PER_USER"] = "lots"
	if _, err := runEnv("token", "list", "--db", db, "--user", "alice"); !errors.Is(err, errUsage) {
		t.Errorf("a bad TOKEND_MAX_TOKENS_PER_USER: %v, want a usage error", err)
	}
}

// TestCLIDatabaseNameStartingWithAt runs a server on a relative database
// path that starts with "@", which Linux would take, as a socket address,
// for an abstract socket (no file, no file mode): the admin socket is a
// real, owner-only file beside the database, and the token commands reach
// the server through it.
func TestCLIDatabaseNameStartingWithAt(t *testing.T) {
	t.Chdir(t.TempDir())
	s := startServer(t, "@at.db")
	fi, err := os.Stat("@at.db.sock")
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket beside @at.db: %v, %v", fi, err)
	}
	tok := createToken(t, s.db, "alice", "at")
	if code, _ := cliGetSelf(t, s, tok.ID, tok.Secret); code != http.StatusOK {
		t.Errorf("a token created through the socket: status %d", code)
	}
}
