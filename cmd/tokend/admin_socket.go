package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"syscall"
)

// checkSocketPath refuses an admin socket path that a unix socket address
// cannot hold (sun_path: 108 bytes on Linux, 104 on macOS, the last for a
// NUL), which bind would refuse only with "invalid argument", and only
// after the database had been opened.
func checkSocketPath(path string) error {
	if max := len(syscall.RawSockaddrUnix{}.Path) - 1; len(path) > max {
		return fmt.Errorf("the admin socket %s (the database path plus .sock) is %d bytes long, and a unix socket path holds at most %d; use a shorter database path", path, len(path), max)
	}
	return nil
}

// listenAdmin listens on the unix socket beside the database for the
// `tokend token` commands. Only the owner can reach it: the socket file is
// mode 0600, and every connection's peer credentials are checked as well,
// since a file mode alone can be undone by a careless chmod.
//
// A socket file already at path is stale: the caller holds the database's
// exclusive lock, so no other server can be using it.
func listenAdmin(ctx context.Context, path string, log *slog.Logger) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin socket path %s exists and is not a socket; refusing to replace it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale admin socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict admin socket: %w", err)
	}
	return &ownerListener{Listener: ln, uid: os.Getuid(), log: log}, nil
}

// ownerListener accepts only connections from processes of the same user
// (or root).
type ownerListener struct {
	net.Listener
	uid int
	log *slog.Logger
}

func (l *ownerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && (uid == l.uid || uid == 0) {
			return c, nil
		}
		l.log.Warn("refused admin connection from another user", slog.Int("uid", uid), slog.Any("error", err))
		c.Close()
	}
}
