package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc/grpclog"
)

// grpcLogs carries what grpc-go and grpc-gateway log through package
// grpclog into tokend's log, so that every line tokend writes to stderr
// is one of its structured lines, with whatever a client put in it
// escaped. grpclog's own logger writes plain text lines, in which
// grpc-gateway quoted a client's header raw.
//
// It is package state because grpclog's logger is: one per process, set
// once, before any gRPC code runs (init). serve points it at its logger
// (use); until then, and for the commands that do not serve, lines go to
// stderr as JSON.
var grpcLogs = newGRPCLog(os.Getenv, slog.New(slog.NewJSONHandler(os.Stderr, nil)))

func init() { grpclog.SetLoggerV2(grpcLogs) }

// grpcLog is a grpclog.LoggerV2 over slog. Like grpclog's default logger
// it keeps errors only, unless GRPC_GO_LOG_SEVERITY_LEVEL (info, warning,
// error) and GRPC_GO_LOG_VERBOSITY_LEVEL ask for more.
type grpcLog struct {
	to        atomic.Pointer[slog.Logger]
	min       slog.Level
	verbosity int
}

func newGRPCLog(getenv func(string) string, log *slog.Logger) *grpcLog {
	g := &grpcLog{min: slog.LevelError}
	switch strings.ToLower(getenv("GRPC_GO_LOG_SEVERITY_LEVEL")) {
	case "info":
		g.min = slog.LevelInfo
	case "warning":
		g.min = slog.LevelWarn
	}
	g.verbosity, _ = strconv.Atoi(getenv("GRPC_GO_LOG_VERBOSITY_LEVEL"))
	g.to.Store(log)
	return g
}

// use sends later lines to log, and returns the logger they went to.
func (g *grpcLog) use(log *slog.Logger) *slog.Logger { return g.to.Swap(log) }

func (g *grpcLog) emit(level slog.Level, msg string) {
	if level < g.min {
		return
	}
	g.to.Load().LogAttrs(context.Background(), level, msg, slog.String("component", "grpc"))
}

func sprintln(args []any) string { return strings.TrimSuffix(fmt.Sprintln(args...), "\n") }

// Info, Warning and Error, each with ln and f forms, log at that level.
func (g *grpcLog) Info(args ...any) { g.emit(slog.LevelInfo, fmt.Sprint(args...)) }

func (g *grpcLog) Infoln(args ...any) { g.emit(slog.LevelInfo, sprintln(args)) }

func (g *grpcLog) Infof(format string, args ...any) {
	g.emit(slog.LevelInfo, fmt.Sprintf(format, args...))
}

func (g *grpcLog) Warning(args ...any) { g.emit(slog.LevelWarn, fmt.Sprint(args...)) }

func (g *grpcLog) Warningln(args ...any) { g.emit(slog.LevelWarn, sprintln(args)) }

func (g *grpcLog) Warningf(format string, args ...any) {
	g.emit(slog.LevelWarn, fmt.Sprintf(format, args...))
}

func (g *grpcLog) Error(args ...any) { g.emit(slog.LevelError, fmt.Sprint(args...)) }

func (g *grpcLog) Errorln(args ...any) { g.emit(slog.LevelError, sprintln(args)) }

func (g *grpcLog) Errorf(format string, args ...any) {
	g.emit(slog.LevelError, fmt.Sprintf(format, args...))
}

// Fatal, Fatalln and Fatalf log and exit, as grpclog requires.
func (g *grpcLog) Fatal(args ...any) {
	g.emit(slog.LevelError, fmt.Sprint(args...))
	os.Exit(1)
}

func (g *grpcLog) Fatalln(args ...any) {
	g.emit(slog.LevelError, sprintln(args))
	os.Exit(1)
}

func (g *grpcLog) Fatalf(format string, args ...any) {
	g.emit(slog.LevelError, fmt.Sprintf(format, args...))
	os.Exit(1)
}

// V reports whether verbosity level l is logged.
func (g *grpcLog) V(l int) bool { return l <= g.verbosity }
