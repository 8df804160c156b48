package main

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestHTTPLimits(t *testing.T) {
	s := startServer(t, "", "--http-read-header-timeout", "300ms", "--http-max-header-bytes", "8192")

	t.Run("oversized headers get 431", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+s.addrs.HTTP+"/healthz", nil)
		req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
		resp, err := s.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("status %d, want 431", resp.StatusCode)
		}
	})

	t.Run("a slow-headers client is cut off", func(t *testing.T) {
		conn, err := net.Dial("tcp", s.addrs.HTTP)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil {
			t.Fatal(err)
		}
		// Never finish the headers; the server must give up on its own.
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = bufio.NewReader(conn).ReadString('\n')
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the server held a slow-headers connection for 5s (read timeout is 300ms)")
		}
		// The server still serves others.
		if resp, body := s.get(t, "/healthz"); resp.StatusCode != http.StatusOK {
			t.Errorf("after the slow client: /healthz = %d %s", resp.StatusCode, body)
		}
	})
}
