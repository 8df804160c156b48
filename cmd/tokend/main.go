// Command tokend serves personal access tokens over gRPC and REST, and
// administers them from the command line. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal starts a graceful stop; once it has, signals are
	// the runtime's again, so a second one ends the process at once.
	context.AfterFunc(ctx, stop)
	stderr := newLogWriter(os.Stderr, 100*time.Millisecond)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, stderr)
	stop()
	stderr.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tokend: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
