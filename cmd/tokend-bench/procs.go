package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tokend/tokend/service/testutil"
)

// proc is a child process of the harness: a server under test.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error
	stopped sync.Once
}

// procs tracks every child so all of them are stopped however the run
// ends.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

func (ps *procs) add(p *proc) {
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
}

// stopAll stops every child still running, in parallel.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Go(p.stop)
	}
	wg.Wait()
}

// pid is the child's process id (taskset execs the server in place, so it
// is the server's pid either way).
func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 5 s, then sends SIGKILL.
func (p *proc) stop() {
	p.stopped.Do(func() {
		if p.exited() {
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(5 * time.Second):
		}
		_ = p.cmd.Process.Kill()
		<-p.done
	})
}

// startProc starts bin with args, pinned to CPU 0 if pin is set, with
// stderr (and stdout unless stdout is given) appended to logPath.
func startProc(ps *procs, name string, pin bool, logPath string, stdout io.Writer, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	if pin {
		args = append([]string{"-c", "0", bin}, args...)
		bin = "taskset"
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = testutil.ChildEnv()
	cmd.Stderr = logf
	cmd.Stdout = logf
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	ps.add(p)
	return p, nil
}

// logTail returns the last few lines of a child's log, for error messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// startBaseline re-executes this program as a baseline server and reads
// the address it prints.
func startBaseline(ctx context.Context, ps *procs, self, sub, dir string, pin bool) (*proc, string, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	defer pr.Close()
	p, err := startProc(ps, sub, pin, filepath.Join(dir, sub+".log"), pw, self, sub, "-addr", "127.0.0.1:0")
	pw.Close()
	if err != nil {
		return nil, "", err
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(pr).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case addr := <-line:
		if addr == "" {
			return nil, "", fmt.Errorf("%s exited without an address: %s", sub, logTail(p.logPath))
		}
		return p, addr, nil
	case <-time.After(15 * time.Second):
		return nil, "", fmt.Errorf("%s printed no address within 15s", sub)
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
}

// tokendAddrs are the addresses from tokend's "tokend listening" line.
type tokendAddrs struct {
	HTTP, GRPC, Debug string
}

// startTokend starts tokend serve on db and waits for its "tokend
// listening" line. The start time runs from just before exec to the time
// stamped on that line.
func startTokend(ctx context.Context, ps *procs, bin, db, logPath string, pin bool) (*proc, tokendAddrs, time.Duration, error) {
	t0 := time.Now()
	p, err := startProc(ps, "tokend", pin, logPath, nil, bin, "serve", "--db", db,
		"--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0")
	if err != nil {
		return nil, tokendAddrs{}, 0, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if a, at, ok := findListening(logPath); ok {
			start := at.Sub(t0)
			if at.IsZero() || start <= 0 {
				start = time.Since(t0)
			}
			return p, a, start, nil
		}
		if p.exited() {
			return nil, tokendAddrs{}, 0, fmt.Errorf("tokend exited before listening (%v): %s", p.waitErr, logTail(logPath))
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, tokendAddrs{}, 0, fmt.Errorf("tokend not listening after 60s: %s", logTail(logPath))
		}
		select {
		case <-ctx.Done():
			return nil, tokendAddrs{}, 0, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// findListening looks for the "tokend listening" line in a log file.
func findListening(path string) (tokendAddrs, time.Time, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return tokendAddrs{}, time.Time{}, false
	}
	for line := range bytes.Lines(b) {
		if !bytes.Contains(line, []byte(`"tokend listening"`)) {
			continue
		}
		var rec struct {
			Time  time.Time `json:"time"`
			Msg   string    `json:"msg"`
			HTTP  string    `json:"http"`
			GRPC  string    `json:"grpc"`
			Debug string    `json:"debug"`
		}
		if json.Unmarshal(line, &rec) != nil || rec.Msg != "tokend listening" || rec.HTTP == "" || rec.GRPC == "" {
			continue
		}
		return tokendAddrs{HTTP: rec.HTTP, GRPC: rec.GRPC, Debug: rec.Debug}, rec.Time, true
	}
	return tokendAddrs{}, time.Time{}, false
}

// clkTck is the unit of utime and stime in /proc/<pid>/stat.
var clkTck = sync.OnceValue(func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && v > 0 {
			return float64(v)
		}
	}
	return 100
})

// cpuTime returns the user plus system CPU time a process has used, from
// /proc/<pid>/stat (all threads, including exited ones).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b, clkTck())
}

// parseStatCPU extracts utime+stime from the contents of /proc/<pid>/stat.
// The command name, in parentheses, may hold spaces, so fields are
// counted from the last ')'.
func parseStatCPU(b []byte, tck float64) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed /proc stat times")
	}
	return time.Duration(float64(ut+st) / tck * float64(time.Second)), nil
}

// rssBytes returns a process's resident set size from /proc/<pid>/status.
func rssBytes(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// memStats is the part of runtime.MemStats that /debug/vars reports and
// the results use.
type memStats struct {
	HeapInuse uint64 `json:"HeapInuse"`
	HeapAlloc uint64 `json:"HeapAlloc"`
	HeapSys   uint64 `json:"HeapSys"`
	Sys       uint64 `json:"Sys"`
	NumGC     uint32 `json:"NumGC"`
}

// readMemStats fetches memstats from tokend's expvar endpoint. With gc set
// it first asks pprof's heap handler for a profile with gc=1, which runs a
// garbage collection in tokend.
func readMemStats(ctx context.Context, debugAddr string, gc bool) (memStats, error) {
	client := &http.Client{Timeout: 30 * time.Second}
	get := func(path string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+debugAddr+path, nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return b, err
	}
	if gc {
		if _, err := get("/debug/pprof/heap?gc=1"); err != nil {
			return memStats{}, err
		}
	}
	b, err := get("/debug/vars")
	if err != nil {
		return memStats{}, err
	}
	var v struct {
		MemStats *memStats `json:"memstats"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return memStats{}, err
	}
	if v.MemStats == nil {
		return memStats{}, errors.New("/debug/vars has no memstats")
	}
	return *v.MemStats, nil
}

// saveHeapProfile writes tokend's heap profile, taken after a forced
// garbage collection, to path.
func saveHeapProfile(ctx context.Context, debugAddr, path string) error {
	return saveProfile(ctx, debugAddr, "/debug/pprof/heap?gc=1", 30*time.Second, path)
}

// saveCPUProfile writes a CPU profile of tokend over the next d, whole
// seconds, to path.
func saveCPUProfile(ctx context.Context, debugAddr string, d time.Duration, path string) error {
	secs := int(d / time.Second)
	return saveProfile(ctx, debugAddr, "/debug/pprof/profile?seconds="+strconv.Itoa(secs), d+30*time.Second, path)
}

// saveProfile fetches one pprof endpoint of tokend's debug listener into path.
func saveProfile(ctx context.Context, debugAddr, endpoint string, timeout time.Duration, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+debugAddr+endpoint, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", endpoint, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// pinning decides whether servers go on CPU 0 and the harness on CPU 1.
func canPin() (bool, string) {
	if runtime.GOOS != "linux" {
		return false, "not Linux"
	}
	if runtime.NumCPU() < 2 {
		return false, fmt.Sprintf("only %d CPU available", runtime.NumCPU())
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return false, "taskset not found"
	}
	return true, ""
}

// pinSelf moves every thread of this process to CPU 1 and sizes the Go
// scheduler to match.
func pinSelf() error {
	out, err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset -a -p -c 1: %v: %s", err, bytes.TrimSpace(out))
	}
	runtime.GOMAXPROCS(1)
	return nil
}

// logScan counts warnings and errors in tokend's log.
type logScan struct {
	Lines   int64    `json:"lines"`
	Bytes   int64    `json:"bytes"`
	Warn    int64    `json:"warn"`
	Error   int64    `json:"error"`
	Samples []string `json:"samples,omitempty"`
	offset  int64
}

// scan reads the log from where the last scan stopped. If the file has
// grown past limit bytes it is truncated afterwards (the child appends, so
// it keeps writing at the new end), which bounds the disk a long run uses.
func (s *logScan) scan(path string, limit int64) error {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(s.offset, io.SeekStart); err != nil {
		return err
	}
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An absurdly long line: count it and skip the rest.
			s.offset += int64(len(line))
			s.Bytes += int64(len(line))
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.ReadSlice('\n')
				s.offset += int64(len(line))
				s.Bytes += int64(len(line))
			}
			s.Lines++
			continue
		}
		if err != nil {
			break // a partial last line is read next time
		}
		s.offset += int64(len(line))
		s.Bytes += int64(len(line))
		s.Lines++
		warn := bytes.Contains(line, []byte(`"level":"WARN"`))
		bad := bytes.Contains(line, []byte(`"level":"ERROR"`))
		if warn {
			s.Warn++
		}
		if bad {
			s.Error++
		}
		if (warn || bad) && len(s.Samples) < 10 {
			l := strings.TrimSpace(string(line))
			if len(l) > 400 {
				l = l[:400] + "…"
			}
			s.Samples = append(s.Samples, l)
		}
	}
	if s.offset > limit {
		if err := os.Truncate(path, 0); err != nil {
			return err
		}
		s.offset = 0
	}
	return nil
}

// machineBusy returns the CPU time all CPUs have spent not idle (user,
// nice, system, irq, softirq, steal) from /proc/stat's "cpu" line.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineBusy(b, clkTck())
}

func parseMachineBusy(b []byte, tck float64) (time.Duration, error) {
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != "cpu" {
			continue
		}
		var busy uint64
		for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return 0, errors.New("malformed /proc/stat")
			}
			busy += v
		}
		return time.Duration(float64(busy) / tck * float64(time.Second)), nil
	}
	return 0, errors.New("no cpu line in /proc/stat")
}
