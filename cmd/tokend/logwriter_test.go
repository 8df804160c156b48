package main

import (
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLogWriterFlushesOnIntervalAndClose(t *testing.T) {
	var mu sync.Mutex
	var out strings.Builder
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	})
	lw := newLogWriter(w, 10*time.Millisecond)
	if _, err := lw.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	var got string
	if !waitFor(5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		got = out.String()
		return got == "one\n"
	}) {
		t.Fatalf("after the interval the output is %q, want %q", got, "one\n")
	}
	lw.Write([]byte("two\n"))
	lw.Close()
	mu.Lock()
	defer mu.Unlock()
	if got := out.String(); got != "one\ntwo\n" {
		t.Errorf("after Close the output is %q, want %q", got, "one\ntwo\n")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
