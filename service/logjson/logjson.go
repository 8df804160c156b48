// Package logjson is a log/slog handler with a fast path for flat records
// of simple kinds, byte-identical to slog.NewJSONHandler(w, nil); everything
// else it hands to slog itself.
//
// Why: tokend logs one such line per request, and the fast path writes it
// without allocating in less than half of slog's time, by rules copied from
// Go 1.26's log/slog (handler.go, json_handler.go) and encoding/json
// (encode.go). The tests compare its output byte for byte with the
// toolchain's slog.JSONHandler, so a Go release that changes slog's output
// makes them fail.
package logjson

import (
	"context"
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// NewHandler returns a slog.Handler that writes each record to w as one line
// of JSON, byte for byte as slog.NewJSONHandler(w, nil) would, with one
// w.Write call. The Write calls of the handler and of all handlers derived
// from it are serialized by one mutex, so lines never interleave. Handle
// returns the error from w.Write.
func NewHandler(w io.Writer) slog.Handler {
	lw := &lockedWriter{w: w}
	return &handler{w: lw, slog: slog.NewJSONHandler(lw, nil)}
}

// handler takes the fast path for the records it can, and hands everything
// else, including WithAttrs and WithGroup, to its slog.JSONHandler, which
// writes through the same lockedWriter.
type handler struct {
	w    *lockedWriter
	slog slog.Handler
	bufs sync.Pool // of *[]byte, for the fast path's lines
}

// lockedWriter serializes the writes of the fast path with those of the slog
// handler and of the handlers derived from it.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (lw *lockedWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.w.Write(p)
}

// Enabled reports whether level is at least slog.LevelInfo, as slog's does.
func (h *handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.slog.Enabled(ctx, level)
}

// WithAttrs and WithGroup return slog's: derived handlers are plain
// slog.JSONHandlers writing through the same lock.
func (h *handler) WithAttrs(as []slog.Attr) slog.Handler { return h.slog.WithAttrs(as) }
func (h *handler) WithGroup(name string) slog.Handler    { return h.slog.WithGroup(name) }

// Handle writes r as one line of JSON. Like slog's handler it does not check
// the level; that is the job of Enabled.
func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	bp, _ := h.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	buf, ok := appendRecord((*bp)[:0], &r)
	var err error
	if ok {
		_, err = h.w.Write(buf)
	} else {
		err = h.slog.Handle(ctx, r)
	}
	// Pool only smaller buffers, as slog does (log/slog/internal/buffer).
	if cap(buf) <= 16<<10 {
		*bp = buf
		h.bufs.Put(bp)
	}
	return err
}

// appendRecord appends r as slog's commonHandler.handle does for JSON with
// default options and no WithAttrs/WithGroup history, and reports true; or
// it reports false, having called no user code (MarshalJSON, Error,
// LogValue), if r is not for the fast path.
func appendRecord(buf []byte, r *slog.Record) ([]byte, bool) {
	buf = append(buf, '{')
	// The time is omitted if zero, and stripped of its monotonic reading.
	if !r.Time.IsZero() {
		t := r.Time.Round(0)
		if !yearInRange(t) {
			return buf, false
		}
		buf = append(buf, `"time":`...)
		buf = appendTime(buf, t)
		buf = append(buf, ',')
	}
	// r.Level.String() allocates nothing for DEBUG, INFO, WARN and ERROR.
	buf = append(buf, `"level":`...)
	buf = appendString(buf, r.Level.String())
	buf = append(buf, `,"msg":`...)
	buf = appendString(buf, r.Message)
	ok := true
	r.Attrs(func(a slog.Attr) bool {
		buf, ok = appendAttr(buf, a)
		return ok
	})
	if !ok {
		return buf, false
	}
	return append(buf, "}\n"...), true
}

// appendAttr appends ,"key":value as slog's handleState.appendAttr and
// appendJSONValue do, for a non-empty key and a value of a simple kind. For
// any other attribute it reports false.
func appendAttr(buf []byte, a slog.Attr) ([]byte, bool) {
	if a.Key == "" {
		return buf, false
	}
	buf = append(buf, ',')
	buf = appendString(buf, a.Key)
	buf = append(buf, ':')
	v := a.Value
	switch v.Kind() {
	case slog.KindString:
		return appendString(buf, v.String()), true
	case slog.KindInt64:
		return strconv.AppendInt(buf, v.Int64(), 10), true
	case slog.KindUint64:
		return strconv.AppendUint(buf, v.Uint64(), 10), true
	case slog.KindFloat64:
		// slog calls json.Marshal, which fails on NaN and infinities, and
		// writes the error.
		f := v.Float64()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return buf, false
		}
		return appendFloat(buf, f), true
	case slog.KindBool:
		return strconv.AppendBool(buf, v.Bool()), true
	case slog.KindDuration:
		// slog, like json.Marshal, writes the integer nanoseconds.
		return strconv.AppendInt(buf, int64(v.Duration()), 10), true
	case slog.KindTime:
		t := v.Time()
		if !yearInRange(t) {
			return buf, false
		}
		return appendTime(buf, t), true
	}
	return buf, false // KindAny, KindGroup, KindLogValuer
}

// yearInRange is the check in slog's appendJSONTime (from
// time.Time.MarshalJSON); outside it slog writes an "!ERROR:" string too.
func yearInRange(t time.Time) bool {
	y := t.Year()
	return y >= 0 && y < 10000
}

// appendTime is slog's appendJSONTime for years in range.
func appendTime(buf []byte, t time.Time) []byte {
	buf = append(buf, '"')
	buf = t.AppendFormat(buf, time.RFC3339Nano)
	return append(buf, '"')
}

// appendFloat writes a finite f as json.Marshal does (encoding/json's
// floatEncoder.encode for 64 bits), which is what slog calls.
func appendFloat(buf []byte, f float64) []byte {
	// Convert as if by ES6 number to string conversion.
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	buf = strconv.AppendFloat(buf, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(buf)
		if n >= 4 && buf[n-4] == 'e' && buf[n-3] == '-' && buf[n-2] == '0' {
			buf[n-2] = buf[n-1]
			buf = buf[:n-1]
		}
	}
	return buf
}

// appendString appends s quoted, as slog's handleState.appendString does
// for JSON.
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	buf = appendEscapedJSONString(buf, s)
	return append(buf, '"')
}

// appendEscapedJSONString has the semantics of slog's appendEscapedJSONString
// (encoding/json's appendString with HTML escaping off): it appends s
// without quotation marks, escaping '"', '\\' and control characters (\n,
// \r and \t short, the others as \u00XX), replacing each byte of invalid
// UTF-8 with \ufffd, and escaping U+2028 and U+2029, which are valid in JSON
// strings but not in JavaScript (JSONP). '<', '>' and '&' are left as they are.
func appendEscapedJSONString(buf []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c, size := rune(s[i]), 1
		if ' ' <= c && c < utf8.RuneSelf && c != '"' && c != '\\' {
			i++ // encoding/json's safeSet
			continue
		}
		if c >= utf8.RuneSelf {
			c, size = utf8.DecodeRuneInString(s[i:])
		}
		var esc byte
		switch {
		case c == '"' || c == '\\':
			esc = byte(c)
		case c == '\n':
			esc = 'n'
		case c == '\r':
			esc = 'r'
		case c == '\t':
			esc = 't'
		case c < ' ' || c == utf8.RuneError && size == 1 || c == '\u2028' || c == '\u2029':
			esc = 'u'
		default: // valid UTF-8 that needs no escaping
			i += size
			continue
		}
		buf = append(buf, s[start:i]...)
		if esc == 'u' {
			buf = append(buf, '\\', 'u', hex[c>>12], hex[c>>8&0xF], hex[c>>4&0xF], hex[c&0xF])
		} else {
			buf = append(buf, '\\', esc)
		}
		i += size
		start = i
	}
	return append(buf, s[start:]...)
}

const hex = "0123456789abcdef"
