package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
)

// creds are the seeded tokens the load generator authenticates with.
type creds struct {
	ids     []int64
	bearers []string // "Bearer tkd_…"
}

// seedAllowedIPs mirror the example token's two entries, with one that
// admits the benchmark's loopback client, so every token carries an IP
// restriction that tokend checks and a response the size of the example.
var seedAllowedIPs = []string{"127.0.0.0/8", "203.0.113.12"}

// seedChunk is how many tokens go into one write transaction.
const seedChunk = 20000

// seedInfo describes a seeded database.
type seedInfo struct {
	Tokens  int `json:"tokens"`
	Users   int `json:"users"`
	Seconds F   `json:"seconds"`
	DBBytes int `json:"db_bytes"`
}

// seed creates a fresh database at path holding n active tokens spread
// round-robin over users users, and returns their ids and secrets.
func seed(ctx context.Context, path string, n, users int) (*creds, seedInfo, error) {
	t0 := time.Now()
	st, err := store.Open(path, store.Options{})
	if err != nil {
		return nil, seedInfo{}, err
	}
	defer st.Close()
	ips, err := token.ParseAllowedIPs(seedAllowedIPs)
	if err != nil {
		return nil, seedInfo{}, err
	}
	now := token.Clock(time.Now())
	expires := now.Add(365 * 24 * time.Hour)
	c := &creds{ids: make([]int64, 0, n), bearers: make([]string, 0, n)}
	batch := make([]token.Token, 0, seedChunk)
	secrets := make([]string, 0, seedChunk)
	for i := 0; i < n; {
		if err := ctx.Err(); err != nil {
			return nil, seedInfo{}, err
		}
		batch, secrets = batch[:0], secrets[:0]
		for ; i < n && len(batch) < seedChunk; i++ {
			s, err := secret.New()
			if err != nil {
				return nil, seedInfo{}, err
			}
			batch = append(batch, token.Token{
				UserID:     fmt.Sprintf("user%04d", i%users),
				Name:       "bench " + strconv.Itoa(i),
				SecretHash: secret.HashOf(s),
				CreatedAt:  now,
				ExpiresAt:  expires,
				AllowedIPs: ips,
			})
			secrets = append(secrets, s)
		}
		out, err := st.CreateBatch(batch)
		if err != nil {
			return nil, seedInfo{}, err
		}
		for j, t := range out {
			c.ids = append(c.ids, int64(t.ID))
			c.bearers = append(c.bearers, "Bearer "+secrets[j])
		}
	}
	if err := st.Close(); err != nil {
		return nil, seedInfo{}, err
	}
	info := seedInfo{Tokens: n, Users: users, Seconds: F(time.Since(t0).Seconds())}
	if fi, err := os.Stat(path); err == nil {
		info.DBBytes = int(fi.Size())
	}
	return c, info, nil
}

// sourceInfo identifies the tokend source that was built: results
// describe the working tree as it was, uncommitted changes included.
type sourceInfo struct {
	Commit string   `json:"commit,omitempty"`
	Dirty  []string `json:"uncommitted,omitempty"` // git status --porcelain, outside the benchmark's own files
}

// gitSource reads (never changes) the repository state at root.
func gitSource(ctx context.Context, root string) sourceInfo {
	var s sourceInfo
	if out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "HEAD").Output(); err == nil {
		s.Commit = strings.TrimSpace(string(out))
	}
	if out, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain").Output(); err == nil {
		for line := range strings.Lines(string(out)) {
			line = strings.TrimRight(line, "\n")
			if line == "" || strings.Contains(line, "bench/") {
				continue
			}
			s.Dirty = append(s.Dirty, line)
		}
	}
	return s
}

// buildTokend builds ./cmd/tokend of the module this harness belongs to
// into dir and returns the binary's path and the module's root.
func buildTokend(ctx context.Context, dir string) (string, string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", "", fmt.Errorf("not inside the tokend module (go env GOMOD is empty); run from the repository")
	}
	bin := filepath.Join(dir, "tokend")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/tokend")
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build ./cmd/tokend: %w\n%s", err, b)
	}
	return bin, cmd.Dir, nil
}
