package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// errUsage marks command-line mistakes; main exits 2 for them.
var errUsage = errors.New("usage")

const usageText = `tokend serves personal access tokens over gRPC and REST.

Usage:
  tokend serve [flags]                        run the server
  tokend token create --user USER --name NAME [--expires-in DURATION] [--allowed-ip IP_OR_CIDR]... [--json]
  tokend token list   --user USER [--json]
  tokend token show   --user USER [--json] ID
  tokend token update --user USER [--name NAME] [--allowed-ip IP_OR_CIDR]... [--clear-allowed-ips] [--json] ID
  tokend token rotate --user USER [--grace-period DURATION] [--json] ID
  tokend token revoke --user USER [--json] ID
  tokend version                              print the version and build information

Every command takes --db PATH (env TOKEND_DB, default tokend.db). The token
commands talk to a running server over its owner-only socket PATH.sock, or
open the database directly when no server is running.

Run "tokend serve -h" for the server's flags.
`

// run is the whole program: main only wires it to the process. Asking a
// command for help (-h) prints its flags and succeeds.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if err := dispatch(ctx, args, getenv, stdout, stderr); !errors.Is(err, flag.ErrHelp) {
		return err
	}
	return nil
}

func dispatch(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return fmt.Errorf("%w: no command given", errUsage)
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], getenv, stderr, nil)
	case "token":
		return runToken(ctx, args[1:], getenv, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return nil
	}
	fmt.Fprint(stderr, usageText)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
}

// parseFlags parses args with fs, allowing flags after positional
// arguments ("revoke 5 --user alice"), and returns the positionals.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// envOr returns the environment variable key, or def if it is unset.
func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}
