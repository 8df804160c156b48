package gateway

import (
	_ "embed"
	"io"
	"net/http"
	"strconv"
)

// openAPIDocument (a string, so nobody can change it) is the published REST contract: an OpenAPI 3.1 document
// written by hand. It is the contract, not a description generated from the
// code; tests check the server's answers against it.
//
//go:embed openapi.json
var openAPIDocument string

// openAPIHandler serves the OpenAPI document as application/json (New
// lets only GET and HEAD reach it).
func openAPIHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(openAPIDocument)))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, openAPIDocument)
		}
	})
}
