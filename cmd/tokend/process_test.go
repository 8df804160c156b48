package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tokend/tokend/service/testutil"
)

// procBuild returns the tokend binary, built as a user would get it. It is
// built once per test run (each build takes seconds) into a directory
// removed when the tests end (TestMain).
func procBuild(t *testing.T) string {
	t.Helper()
	bin, err := builtBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

var (
	binDir      string // set by TestMain
	builtBinary = sync.OnceValues(func() (string, error) {
		goTool, err := exec.LookPath("go")
		if err != nil {
			root := os.Getenv("GOROOT")
			if root == "" {
				return "", fmt.Errorf("no go tool to build tokend with: %w", err)
			}
			goTool = filepath.Join(root, "bin", "go")
		}
		bin := filepath.Join(binDir, "tokend")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build: %w\n%s", err, out)
		}
		return bin, nil
	})
)

// TestMain gives the shared binary a directory and removes it afterwards.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tokend-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// child is `tokend serve` running as a child process.
type child struct {
	cmd  *exec.Cmd
	done chan error // receives Wait's result once
	// logText renders what the child has logged, for failure messages.
	logText func() string
}

// childLog is where a child's log goes and how a test reads it back.
type childLog struct {
	w io.Writer // takes the child's stderr
	// listening looks for the "tokend listening" line in what was logged
	// so far.
	listening func() (map[string]any, bool)
	// text renders what the child has logged, for failure messages.
	text func() string
}

// startChild starts `tokend serve` on db with its log going to log.w, as
// user as (nil: as the test), kills it when the test ends if it is still
// running, and waits for its "tokend listening" line, which log.listening
// looks for. It returns the line, from which callers learn the bound
// addresses.
func startChild(t *testing.T, bin, db string, log childLog, as *syscall.Credential, extra ...string) (*child, map[string]any) {
	t.Helper()
	c := &child{done: make(chan error, 1), logText: log.text}
	args := append([]string{"serve", "--db", db, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"}, extra...)
	c.cmd = exec.Command(bin, args...)
	c.cmd.Env = testutil.ChildEnv()
	c.cmd.Stderr = log.w
	if as != nil {
		c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as}
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	t.Cleanup(func() {
		if exited, _ := c.exited(); !exited {
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if line, ok := log.listening(); ok {
			return c, line
		}
		if exited, err := c.exited(); exited {
			t.Fatalf("tokend serve exited before listening: %v\nlog:\n%s", err, log.text())
		}
	}
	t.Fatalf("tokend serve did not log \"tokend listening\" within 10s\nlog:\n%s", log.text())
	return nil, nil
}

// exited reports, without waiting, whether the process has exited, and if
// so the error Wait returned.
func (c *child) exited() (bool, error) {
	select {
	case err := <-c.done:
		c.done <- err
		return true, err
	default:
		return false, nil
	}
}

// wait waits up to d for the process to exit and returns its exit code.
func (c *child) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("wait: %v", err)
		}
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("tokend serve did not exit within %v\nlog:\n%s", d, c.logText())
		return -1
	}
}

// procServer is `tokend serve` running as a child process, its whole log
// kept in memory.
type procServer struct {
	*child
	stderr *testutil.SyncBuffer
	http   string
	grpc   string
}

// procStart starts `tokend serve` on db and waits for its "tokend
// listening" log line, from which it learns the bound addresses.
func procStart(t *testing.T, bin, db string, extra ...string) *procServer {
	t.Helper()
	return procStartAs(t, bin, db, nil, extra...)
}

// procStartAs is procStart, the server run as user as.
func procStartAs(t *testing.T, bin, db string, as *syscall.Credential, extra ...string) *procServer {
	t.Helper()
	p := &procServer{stderr: &testutil.SyncBuffer{}}
	c, line := startChild(t, bin, db, childLog{
		w:         p.stderr,
		listening: func() (map[string]any, bool) { return procLogLine(p.stderr.String(), "tokend listening") },
		text:      p.stderr.String,
	}, as, extra...)
	p.child = c
	p.http, _ = line["http"].(string)
	p.grpc, _ = line["grpc"].(string)
	if p.http == "" || p.grpc == "" {
		t.Fatalf("listening line lacks http or grpc: %v", line)
	}
	return p
}

// procLogLines returns every JSON log line with the given msg.
func procLogLines(logs, msg string) []map[string]any {
	var out []map[string]any
	for line := range strings.Lines(logs) {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// procTraceLines returns every JSON log line with the given msg and
// trace_id.
func procTraceLines(logs, msg, trace string) []map[string]any {
	var out []map[string]any
	for _, l := range procLogLines(logs, msg) {
		if l["trace_id"] == trace {
			out = append(out, l)
		}
	}
	return out
}

// procLogLine returns the first JSON log line with the given msg.
func procLogLine(logs, msg string) (map[string]any, bool) {
	if lines := procLogLines(logs, msg); len(lines) > 0 {
		return lines[0], true
	}
	return nil, false
}

// procRun runs a short tokend command and returns stdout, stderr and its
// exit code.
func procRun(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = testutil.ChildEnv()
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("tokend %s: %v", strings.Join(args, " "), err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// procGet sends a GET with secret and any other headers ("Name: value").
func procGet(t *testing.T, addr, path, secret string, headers ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Add(k, v)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	validateExchange(t, req, nil, resp, body)
	return resp.StatusCode, body
}

// TestProcess runs the built tokend binary as an operator would: serve,
// mint a token over the socket, use it, stop with SIGTERM, inspect.
func TestProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the tokend binary")
	}
	dir := t.TempDir()
	bin := procBuild(t)
	db := filepath.Join(dir, "tokend.db")

	srv := procStart(t, bin, db)

	// Mint a token with the binary; the server holds the lock, so this
	// can only succeed over the socket.
	out, errOut, code := procRun(t, bin, "token", "create", "--db", db, "--user", "alice", "--name", "process", "--json")
	if code != 0 {
		t.Fatalf("token create exited %d: %s", code, errOut)
	}
	var tok struct {
		ID     int64  `json:"id"`
		Secret string `json:"secret"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.ID <= 0 || !strings.HasPrefix(tok.Secret, "tkd_") {
		t.Fatalf("token create output %q: %v", out, err)
	}
	if tok.Status != "active" {
		t.Errorf("created token status %q", tok.Status)
	}

	status, body := procGet(t, srv.http, tokenPath(tok.ID), tok.Secret)
	if status != http.StatusOK {
		t.Fatalf("GET own token: status %d, body %s", status, body)
	}
	var got struct {
		Data struct {
			ID         int64 `json:"id"`
			UsageCount int64 `json:"usage_count"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &got); err != nil || got.Data.ID != tok.ID || got.Data.UsageCount != 1 {
		t.Errorf("GET own token: %s (%v)", body, err)
	}
	// A wrong secret, which must not be logged either.
	wrong := mustSecret(t)
	if status, body := procGet(t, srv.http, tokenPath(tok.ID), wrong); status != http.StatusUnauthorized {
		t.Errorf("GET with an unknown secret: status %d, body %s", status, body)
	}
	// The gRPC address it logged serves too.
	conn, err := grpc.NewClient("passthrough:///"+srv.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health at the logged address %s: %v, %v", srv.grpc, resp.GetStatus(), err)
	}

	t.Run("second serve is refused", func(t *testing.T) {
		start := time.Now()
		second := procStart2(t, bin, db)
		elapsed := time.Since(start)
		if second.code == 0 {
			t.Errorf("second serve exited 0, want non-zero")
		}
		if elapsed >= 5*time.Second {
			t.Errorf("second serve took %v to exit, want < 5s", elapsed)
		}
		if !strings.Contains(second.stderr, "in use") {
			t.Errorf("second serve stderr lacks \"in use\":\n%s", second.stderr)
		}
		// The first one still answers.
		if status, _ := procGet(t, srv.http, tokenPath(tok.ID), tok.Secret); status != http.StatusOK {
			t.Errorf("first server after the refused second: status %d", status)
		}
	})

	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := srv.wait(t, 10*time.Second); code != 0 {
		t.Errorf("tokend serve exited %d after SIGTERM, want 0\nstderr:\n%s", code, srv.stderr)
	}
	logs := srv.stderr.String()
	if _, ok := procLogLine(logs, "tokend stopped"); !ok {
		t.Errorf("log lacks \"tokend stopped\":\n%s", logs)
	}
	// Durations are logged as the flags take them, not in nanoseconds.
	if l, _ := procLogLine(logs, "tokend shutting down"); l["drain_timeout"] != "10s" {
		t.Errorf("shutdown line's drain_timeout = %v, want the default \"10s\":\n%s", l["drain_timeout"], logs)
	}
	if _, err := os.Lstat(socketPath(db)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("admin socket still there after shutdown (%v)", err)
	}

	// No server: the CLI reads the file and sees both successful uses
	// (the 401 with a wrong secret is not a use of this token).
	out, errOut, code = procRun(t, bin, "token", "list", "--db", db, "--user", "alice", "--json")
	if code != 0 {
		t.Fatalf("token list without a server exited %d: %s", code, errOut)
	}
	var list []struct {
		ID         int64   `json:"id"`
		UsageCount int64   `json:"usage_count"`
		LastUsedAt *string `json:"last_used_at"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("token list output %q: %v", out, err)
	}
	if len(list) != 1 || list[0].ID != tok.ID || list[0].UsageCount != 2 || list[0].LastUsedAt == nil {
		t.Errorf("token list after shutdown = %s, want token %d with usage_count 2 and last_used_at set", out, tok.ID)
	}

	t.Run("logs never hold a secret", func(t *testing.T) {
		if _, ok := procLogLine(logs, "request"); !ok {
			t.Fatalf("no request was logged, so there is nothing to check:\n%s", logs)
		}
		for _, s := range []string{tok.Secret, wrong} {
			if body := strings.TrimPrefix(s, "tkd_"); strings.Contains(logs, body) {
				t.Errorf("log contains (the body of) secret %s", s)
			}
		}
		if leak := logLeak(logs); leak != "" {
			t.Errorf("log contains %q:\n%s", leak, logs)
		}
	})
}

// TestProcessLogIsStructured: every line the server writes to stderr is
// one of its JSON lines, whatever a client sends, including what grpc-go
// and grpc-gateway log (through grpclog, which would write plain text
// lines, quoting a client's header raw); and a header that means nothing
// for the request (a GET's Content-Type) is not handed to grpc-gateway to
// fail to parse and log.
func TestProcessLogIsStructured(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the tokend binary")
	}
	bin := procBuild(t)
	db := filepath.Join(t.TempDir(), "tokend.db")
	// grpc-go logs a bogus connection preface at info level, with the bytes
	// the client sent.
	t.Setenv("GRPC_GO_LOG_SEVERITY_LEVEL", "info")
	srv := procStart(t, bin, db)
	out, errOut, code := procRun(t, bin, "token", "create", "--db", db, "--user", "alice", "--name", "logs", "--json")
	if code != 0 {
		t.Fatalf("token create exited %d: %s", code, errOut)
	}
	var tok createdToken
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		t.Fatal(err)
	}

	const forged = `{"level":"ERROR","msg":"forged"}`
	status, body := procGet(t, srv.http, tokenPath(tok.ID), tok.Secret,
		"Content-Type: x/y; a=1; a=2 "+forged, "X-Note: \u00e9\t"+forged)
	if status != http.StatusOK {
		t.Fatalf("GET with odd headers: %d %s", status, body)
	}
	conn, err := net.Dial("tcp", srv.grpc)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte("GET / HTTP/1.1\r\n\r\n" + forged + strings.Repeat("x", 64)))
	_, _ = io.Copy(io.Discard, conn) // until the server hangs up
	conn.Close()

	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := srv.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM\n%s", code, srv.stderr)
	}
	logs := srv.stderr.String()
	var bogus bool
	for line := range strings.Lines(logs) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("a log line is not JSON (%v): %q", err, line)
			continue
		}
		msg, _ := m["msg"].(string)
		if m["component"] == "grpc" && strings.Contains(msg, "bogus greeting") {
			bogus = true
		}
		if strings.Contains(msg, "Content-Type") {
			t.Errorf("grpc-gateway parsed the GET's Content-Type: %q", line)
		}
	}
	if !bogus {
		t.Errorf("no grpc line about the bogus preface, so grpc's log was not checked:\n%s", logs)
	}
}

type procResult struct {
	stderr string
	code   int
}

// procStart2 runs a second `tokend serve` on db, which must give up.
func procStart2(t *testing.T, bin, db string) procResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--db", db, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0")
	cmd.Env = testutil.ChildEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("second serve: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("second serve was still running after 10s:\n%s", stderr.String())
	}
	return procResult{stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
}

// TestProcessShutdownIsNotHeld checks the binary's graceful stop against
// what would hold it up. A health Watch, a stream that never ends by
// itself, is sent NOT_SERVING and ended, so the stop does not wait out
// --shutdown-timeout for it. A request whose body never finishes does hold
// the drain, and a second signal then ends the process at once.
func TestProcessShutdownIsNotHeld(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the tokend binary")
	}
	bin := procBuild(t)

	t.Run("a health Watch ends", func(t *testing.T) {
		srv := procStart(t, bin, filepath.Join(t.TempDir(), "tokend.db"), "--shutdown-timeout", "60s")
		conn, err := grpc.NewClient("passthrough:///"+srv.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // well inside the 60s drain
		defer cancel()
		watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Watch: %v, %v; want SERVING", r, err)
		}
		if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("Watch after SIGTERM: %v, %v; want NOT_SERVING", r, err)
		}
		if _, err := watch.Recv(); status.Code(err) == codes.DeadlineExceeded || err == nil {
			t.Errorf("the Watch went on after NOT_SERVING (%v), holding up the stop", err)
		}
		// Well inside the 60s drain: nothing else is in flight.
		if code := srv.wait(t, 20*time.Second); code != 0 {
			t.Errorf("exit %d after SIGTERM, want 0\n%s", code, srv.stderr)
		}
		if logs := srv.stderr.String(); strings.Contains(logs, "drain timed out") {
			t.Errorf("the drain timed out:\n%s", logs)
		}
	})

	t.Run("a second signal ends the drain", func(t *testing.T) {
		srv := procStart(t, bin, filepath.Join(t.TempDir(), "tokend.db"), "--shutdown-timeout", "60s")
		c, err := net.DialTimeout("tcp", srv.http, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A create whose body never arrives: its handler waits for it (up
		// to --http-read-timeout, 15s), and the drain waits for the handler.
		if _, err := io.WriteString(c, "POST /api/v1/me/tokens HTTP/1.1\r\nHost: tokend\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // for the server to start handling it
		if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if exited, err := srv.exited(); exited {
			t.Fatalf("tokend exited (%v) with a request in flight; the test needs a drain to interrupt\n%s", err, srv.stderr)
		}
		if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		srv.wait(t, 5*time.Second) // well before the request's read timeout ends the drain
		if ws, ok := srv.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
			t.Errorf("after a second SIGTERM: %v, want killed by SIGTERM", srv.cmd.ProcessState)
		}
	})
}

// TestCLIAsRootReachesServiceAccountServer: an operator runs the token
// commands as root (sudo) while the server runs as a service account. The
// CLI accepts a server running as the user who owns the database, and
// still refuses one running as another user: here the same server's
// socket moved beside a database root owns, as a user who can write to a
// shared directory could plant it.
func TestCLIAsRootReachesServiceAccountServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the tokend binary")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root, to run the server as another user")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "tokend-svc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The service account's directory, and a copy of the binary it may run.
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(procBuild(t))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "tokend")
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "svc.db")
	srv := procStartAs(t, bin, db, &syscall.Credential{Uid: nobody, Gid: nobody})
	logs := srv.stderr

	if _, _, err := cli(t, "token", "create", "--db", db, "--user", "alice", "--name", "by root"); err != nil {
		t.Fatalf("token create as root, server run as the database's owner: %v", err)
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(logs.String(), `"method":"CreateToken"`) }) { // logs go out in 100 ms batches
		t.Errorf("the create did not reach the server:\n%s", logs.String())
	}

	other := filepath.Join(dir, "root.db")
	if _, _, err := cli(t, "token", "create", "--db", other, "--user", "alice", "--name", "root's"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(socketPath(db), socketPath(other)); err != nil {
		t.Fatal(err)
	}
	cliMustFail(t, []string{socketPath(other), "uid 65534"}, "token", "revoke", "--db", other, "--user", "alice", "1")
	// Put the socket back and make a call that reaches the server: once
	// its line is logged, so would a revoke made before it have been.
	if err := os.Rename(socketPath(other), socketPath(db)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cli(t, "token", "list", "--db", db, "--user", "alice"); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(logs.String(), `"method":"ListTokens"`) }) {
		t.Fatalf("the list did not reach the server:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), `"method":"RevokeToken"`) {
		t.Errorf("the revoke of root's token reached nobody's server")
	}
}
