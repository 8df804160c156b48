package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromiumPath is where Debian's chromium package puts the browser; CI
// installs it (.ci/run).
const chromiumPath = "/usr/bin/chromium"

// TestDocsPageInBrowser opens /docs in headless Chromium, as a person
// would, and fails on any console error, uncaught exception or browser log
// error (a blocked resource or a CSP violation, say). It then checks that
// the page shows every operation of the document, with its method and path.
func TestDocsPageInBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing, but CI installs it: %v", chromiumPath, err)
		}
		t.Skipf("%s is missing (apt-get install chromium): %v", chromiumPath, err)
	}

	docs, err := docsHandler()
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/docs", docs)
	mux.Handle("/openapi.json", openAPIHandler())
	srv := httptest.NewServer(mux) // listens on 127.0.0.1
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-features", "Translate"),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("no-pings", true),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()

	var mu sync.Mutex
	var problems []string
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	// Listen starts the browser and opens the tab; chromedp enables the
	// Runtime and Log domains on every tab it opens.
	err = chromedp.Listen(browserCtx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, strings.TrimSpace(string(a.Value)+" "+a.Description))
				}
				report("console.%s: %s", ev.Type, strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			report("uncaught exception at %s:%d:%d: %s", d.URL, d.LineNumber+1, d.ColumnNumber+1, msg)
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError {
				report("browser log error (%s): %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
			}
		}
	})
	if err != nil {
		t.Fatalf("start the browser: %v", err)
	}

	resp, err := chromedp.Run(browserCtx, chromedp.NavigateResponse(srv.URL+"/docs"))
	if err != nil {
		t.Fatalf("open /docs: %v", err)
	}
	if resp.Status != http.StatusOK {
		t.Errorf("GET /docs: status %d", resp.Status)
	}
	if err := chromedp.Do(browserCtx, chromedp.WaitReady(chromedp.CSS("body"))); err != nil {
		t.Fatalf("wait for the page: %v", err)
	}
	title, err := chromedp.Run(browserCtx, chromedp.Title())
	if err != nil {
		t.Fatalf("read the title: %v", err)
	}
	type section struct {
		ID      string `json:"id"`
		Heading string `json:"heading"`
	}
	sections, err := chromedp.Run(browserCtx, chromedp.Evaluate[[]section](
		`Array.from(document.querySelectorAll('[id^="op-"]'), e => ({id: e.id, heading: (e.querySelector('h2') || e).textContent.replace(/\s+/g, ' ').trim()}))`))
	if err != nil {
		t.Fatalf("read the operation sections: %v", err)
	}
	// Let late events (a resource the page should not load, say) arrive
	// before the verdict.
	if err := chromedp.Do(browserCtx, chromedp.Sleep(500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, p := range problems {
		t.Error(p)
	}
	mu.Unlock()

	var doc struct {
		Info struct {
			Title string `json:"title"`
		} `json:"info"`
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal([]byte(openAPIDocument), &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(title, doc.Info.Title) {
		t.Errorf("page title = %q, want the document's title %q", title, doc.Info.Title)
	}

	want := map[string]string{} // operationId → "METHOD path"
	for path, item := range doc.Paths {
		for method, raw := range item {
			if method == "parameters" {
				continue
			}
			var op struct {
				OperationID string `json:"operationId"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			want[op.OperationID] = strings.ToUpper(method) + " " + path
		}
	}
	var wantIDs, gotIDs []string
	for id := range want {
		wantIDs = append(wantIDs, "op-"+id)
	}
	for _, s := range sections {
		gotIDs = append(gotIDs, s.ID)
		if w, ok := want[strings.TrimPrefix(s.ID, "op-")]; ok && !strings.Contains(s.Heading, w) {
			t.Errorf("section %s heading %q does not show %q", s.ID, s.Heading, w)
		}
	}
	slices.Sort(wantIDs)
	slices.Sort(gotIDs)
	if !slices.Equal(gotIDs, wantIDs) {
		t.Errorf("page sections %v, want one per operation %v", gotIDs, wantIDs)
	}
}
