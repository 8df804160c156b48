package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/tokend/tokend/gateway"
	adminv1 "github.com/tokend/tokend/gen/tokend/admin/v1"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service"
	"github.com/tokend/tokend/service/rpc"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
)

func runToken(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return fmt.Errorf("%w: token needs a subcommand: create, list, show, update, rotate or revoke", errUsage)
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return nil
	}
	limits, err := envLimits(getenv)
	if err != nil {
		return err
	}
	withAdmin := func(ctx context.Context, db string, mustExist bool, f func(adminv1.AdminServiceClient) error) error {
		return withAdminLimits(ctx, db, mustExist, limits, f)
	}
	fs := flag.NewFlagSet("tokend token "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := fs.String("db", envOr(getenv, "TOKEND_DB", "tokend.db"), "bbolt database file (env TOKEND_DB)")
	user := fs.String("user", "", "owner of the tokens")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	switch sub {
	case "create":
		name := fs.String("name", "", "label for the token, 1-100 printable characters")
		expiresIn := fs.Duration("expires-in", 0, "lifetime such as 720h; omitted means the token never expires")
		var ips stringList
		fs.Var(&ips, "allowed-ip", "IP address or CIDR range the token may be used from; repeatable")
		if err := noPositionals(fs, args); err != nil {
			return err
		}
		req := &adminv1.CreateTokenRequest{UserId: *user, Name: *name, AllowedIps: ips}
		if isSet(fs, "expires-in") {
			if *expiresIn <= 0 {
				return fmt.Errorf("--expires-in must be a positive duration such as 720h, got %s", *expiresIn)
			}
			req.ExpiresIn = durationpb.New(*expiresIn)
		}
		// Validate before opening anything, so bad input writes nothing.
		// Limits depend on the server's configuration, so they are left to
		// whoever executes the request.
		if _, err := service.ValidateCreate(service.AdminCreateInput(req), service.Limits{}, time.Now()); err != nil {
			return errors.New(token.Detail(err))
		}
		return withAdmin(ctx, *db, false, func(c adminv1.AdminServiceClient) error {
			resp, err := c.CreateToken(ctx, req)
			if err != nil {
				return errors.New(rpcMessage(err))
			}
			return printCreated(stdout, resp, *asJSON)
		})
	case "list":
		if err := noPositionals(fs, args); err != nil {
			return err
		}
		return withAdmin(ctx, *db, true, func(c adminv1.AdminServiceClient) error {
			resp, err := c.ListTokens(ctx, &adminv1.ListTokensRequest{UserId: *user})
			if err != nil {
				return errors.New(rpcMessage(err))
			}
			return printList(stdout, resp.GetTokens(), *asJSON, false)
		})
	case "revoke":
		id, err := oneID(fs, args, sub)
		if err != nil {
			return err
		}
		return withAdmin(ctx, *db, true, func(c adminv1.AdminServiceClient) error {
			resp, err := c.RevokeToken(ctx, &adminv1.RevokeTokenRequest{UserId: *user, TokenId: id})
			if err != nil {
				return errors.New(rpcMessage(err))
			}
			if *asJSON {
				return writeJSON(stdout, gateway.TokenJSON(resp.GetToken()))
			}
			_, err = fmt.Fprintf(stdout, "Revoked token %d (%s).\n", resp.GetToken().GetId(), resp.GetToken().GetName())
			return err
		})
	case "show":
		id, err := oneID(fs, args, sub)
		if err != nil {
			return err
		}
		return withAdmin(ctx, *db, true, func(c adminv1.AdminServiceClient) error {
			resp, err := c.GetToken(ctx, &adminv1.GetTokenRequest{UserId: *user, TokenId: id})
			if err != nil {
				return errors.New(rpcMessage(err))
			}
			return printList(stdout, []*tokenv1.Token{resp.GetToken()}, *asJSON, true)
		})
	case "rotate":
		grace := fs.Duration("grace-period", 0, "how long the old secret keeps working, such as 1h (default: it stops at once)")
		id, err := oneID(fs, args, sub)
		if err != nil {
			return err
		}
		if *grace < 0 || *grace%time.Second != 0 {
			// The API takes whole seconds: rounding would turn 300ms into
			// no grace at all, or 1.5s into 2s, without a word.
			return fmt.Errorf("%w: --grace-period must be a whole number of seconds, not negative, such as 90s or 1h; got %s", errUsage, *grace)
		}
		return withAdmin(ctx, *db, true, func(c adminv1.AdminServiceClient) error {
			resp, err := c.RotateToken(ctx, &adminv1.RotateTokenRequest{UserId: *user, TokenId: id, GracePeriodSeconds: int64(*grace / time.Second)})
			if err != nil {
				return errors.New(rpcMessage(err))
			}
			prev := resp.GetPreviousSecretExpiresAt().AsTime().UTC().Format(time.RFC3339)
			if *asJSON {
				return writeJSON(stdout, rotated{Token: gateway.TokenJSON(resp.GetToken()), Secret: resp.GetSecret(), PreviousSecretExpiresAt: prev})
			}
			_, err = fmt.Fprintf(stdout, "Rotated token %d (%s); the old secret works until %s.\nNew secret, shown only now; store it safely:\n%s\n",
				resp.GetToken().GetId(), resp.GetToken().GetName(), prev, resp.GetSecret())
			return err
		})
	case "update":
		name := fs.String("name", "", "new label for the token")
		var ips stringList
		fs.Var(&ips, "allowed-ip", "new IP address or CIDR range restriction; repeatable; replaces the old list")
		clearIPs := fs.Bool("clear-allowed-ips", false, "remove the IP restriction")
		id, err := oneID(fs, args, sub)
		if err != nil {
			return err
		}
		req := &adminv1.UpdateTokenRequest{UserId: *user, TokenId: id, Token: &tokenv1.TokenUpdate{}, UpdateMask: &fieldmaskpb.FieldMask{}}
		if isSet(fs, "name") {
			req.Token.Name = *name
			req.UpdateMask.Paths = append(req.UpdateMask.Paths, "name")
		}
		switch {
		case *clearIPs && len(ips) > 0:
			return fmt.Errorf("%w: give --allowed-ip or --clear-allowed-ips, not both", errUsage)
		case *clearIPs || len(ips) > 0:
			req.Token.AllowedIps = ips
			req.UpdateMask.Paths = append(req.UpdateMask.Paths, "allowed_ips")
		}
		if len(req.UpdateMask.Paths) == 0 {
			return fmt.Errorf("%w: nothing to update: give --name, --allowed-ip or --clear-allowed-ips", errUsage)
		}
		return withAdmin(ctx, *db, true, func(c adminv1.AdminServiceClient) error {
			resp, err := c.UpdateToken(ctx, req)
			if err != nil {
				return errors.New(rpcMessage(err))
			}
			return printList(stdout, []*tokenv1.Token{resp.GetToken()}, *asJSON, true)
		})
	}
	fmt.Fprint(stderr, usageText)
	return fmt.Errorf("%w: unknown token subcommand %q", errUsage, sub)
}

// oneID parses the flags and the single token id argument of sub.
func oneID(fs *flag.FlagSet, args []string, sub string) (int64, error) {
	pos, err := parseFlags(fs, args)
	if err != nil {
		return 0, err
	}
	if len(pos) != 1 {
		return 0, fmt.Errorf("%w: %s takes exactly one token id", errUsage, sub)
	}
	id, err := strconv.ParseInt(pos[0], 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("token id must be a positive integer, got %q", pos[0])
	}
	return id, nil
}

func noPositionals(fs *flag.FlagSet, args []string) error {
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	return nil
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// rpcMessage is what the user reads for an admin error: the status message,
// which the rpc layer wrote for people and stripped of internals.
func rpcMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

// withAdminLimits calls f with an AdminService client: over the running
// server's socket if one answers (the server applies its own limits), else
// in-process on the database file itself, under limits. With mustExist, a
// missing database is an error rather than created.
func withAdminLimits(ctx context.Context, db string, mustExist bool, limits service.Limits, f func(adminv1.AdminServiceClient) error) error {
	sock := socketPath(db)
	probe, err := dialAdmin(ctx, sock, db)
	switch {
	case err == nil:
		probe.Close()
		// Every connection gRPC makes is checked as the probe was. The
		// target is not parsed as a URL (a path with '#', '?' or '%' in it
		// would be cut short or changed): the dialer is given the path
		// itself.
		conn, err := grpc.NewClient("passthrough:///tokend-admin", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				return dialAdmin(ctx, sock, db)
			}))
		if err != nil {
			return fmt.Errorf("connect to the running server at %s: %w", sock, err)
		}
		defer conn.Close()
		return f(adminv1.NewAdminServiceClient(conn))
	case !errors.Is(err, errNoAdminServer):
		return err
	}
	st, err := store.Open(db, store.Options{LockTimeout: lockTimeout, MustExist: mustExist})
	switch {
	case errors.Is(err, store.ErrInUse):
		return fmt.Errorf("database %s is in use, but no server answers on %s", db, sock)
	case err != nil:
		return err
	}
	defer st.Close()
	_, local := rpc.NewAdmin(rpc.Deps{Store: st, Logger: slog.New(slog.DiscardHandler), Limits: limits, Now: time.Now})
	return f(adminv1.NewAdminServiceClient(local))
}

// errNoAdminServer means no server answers on the admin socket: there is
// no socket file, or a stale one that refuses connections.
var errNoAdminServer = errors.New("no server on the admin socket")

// dialAdmin connects to the admin socket at sock, beside the database db,
// if a server answers there that may be trusted with the commands: sock is
// the socket itself, not a symlink to one elsewhere, and the process behind
// it runs as this user, as root, or (when this is root, as an operator
// with sudo) as the user who owns db, as a server run under a service
// account does. Otherwise a socket planted beside a database in a shared
// directory could take a revoke and answer it, never touching the real
// database, or hand out secrets of its own.
func dialAdmin(ctx context.Context, sock, db string) (net.Conn, error) {
	fi, err := os.Lstat(sock)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, errNoAdminServer
	case err != nil:
		return nil, fmt.Errorf("admin socket: %w", err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("admin socket path %s is not a socket (a symlink?); refusing to use it", sock)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoAdminServer, err)
	}
	uid, err := peerUID(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s: the server's user cannot be told: %w", sock, err)
	}
	if me := os.Getuid(); uid != me && uid != 0 && !(me == 0 && ownsFile(uid, db)) {
		c.Close()
		return nil, fmt.Errorf("the server on the admin socket %s runs as uid %d, neither you nor the owner of %s; refusing to send it commands", sock, uid, db)
	}
	return c, nil
}

// rotated is the --json output of token rotate.
type rotated struct {
	gateway.Token
	Secret                  string `json:"secret"`
	PreviousSecretExpiresAt string `json:"previous_secret_expires_at"`
}

// created is the --json output of token create: the token's REST fields
// plus its secret.
type created struct {
	gateway.Token
	Secret string `json:"secret"`
}

func printCreated(w io.Writer, resp *adminv1.CreateTokenResponse, asJSON bool) error {
	if asJSON {
		return writeJSON(w, created{Token: gateway.TokenJSON(resp.GetToken()), Secret: resp.GetSecret()})
	}
	_, err := fmt.Fprintf(w, "Created token %d (%s).\nSecret, shown only now; store it safely:\n%s\n",
		resp.GetToken().GetId(), resp.GetToken().GetName(), resp.GetSecret())
	return err
}

// printList prints tokens as a table, or as JSON: an array, or with one
// a single object.
func printList(w io.Writer, tokens []*tokenv1.Token, asJSON, one bool) error {
	if asJSON && one && len(tokens) == 1 {
		return writeJSON(w, gateway.TokenJSON(tokens[0]))
	}
	if asJSON {
		out := make([]gateway.Token, len(tokens))
		for i, t := range tokens {
			out[i] = gateway.TokenJSON(t)
		}
		return writeJSON(w, out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tUSES\tLAST USED\tEXPIRES\tCREATED\tALLOWED IPS")
	for _, t := range tokens {
		j := gateway.TokenJSON(t)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", j.ID, j.Name, j.Status, j.UsageCount,
			orDash(j.LastUsedAt, "never"), orDash(j.ExpiresAt, "never"), j.CreatedAt, ipsText(j.AllowedIPs))
	}
	return tw.Flush()
}

func orDash(s *string, none string) string {
	if s == nil {
		return none
	}
	return *s
}

func ipsText(ips []string) string {
	if len(ips) == 0 {
		return "any"
	}
	return strings.Join(ips, ",")
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
