package logjson

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// recWriter records every Write call separately.
type recWriter struct {
	writes [][]byte
	err    error
}

func (w *recWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(p))
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// hop is one step of a handler's history: WithGroup(group) or WithAttrs(attrs).
type hop struct {
	isGroup bool
	group   string
	attrs   []slog.Attr
}

func withGroup(name string) hop     { return hop{isGroup: true, group: name} }
func withAttrs(as ...slog.Attr) hop { return hop{attrs: as} }

func apply(h slog.Handler, ops []hop) slog.Handler {
	for _, op := range ops {
		if op.isGroup {
			h = h.WithGroup(op.group)
		} else {
			// WithAttrs owns the slice it is given; give each handler its own.
			h = h.WithAttrs(append([]slog.Attr(nil), op.attrs...))
		}
	}
	return h
}

type output struct {
	writes  [][]byte
	err     error
	enabled bool
}

func run(newH func(io.Writer) slog.Handler, ops []hop, r slog.Record, werr error) output {
	w := &recWriter{err: werr}
	h := apply(newH(w), ops)
	var o output
	o.enabled = h.Enabled(context.Background(), r.Level)
	o.err = h.Handle(context.Background(), r.Clone())
	o.writes = w.writes
	return o
}

func newSlog(w io.Writer) slog.Handler { return slog.NewJSONHandler(w, nil) }

// compare fails t unless logjson and slog.JSONHandler write the same bytes,
// in the same Write calls, and return the same error and Enabled result.
func compare(t *testing.T, ops []hop, r slog.Record, werr error) {
	t.Helper()
	want := run(newSlog, ops, r, werr)
	got := run(NewHandler, ops, r, werr)
	if got.enabled != want.enabled {
		t.Errorf("Enabled(%v) = %v, slog says %v", r.Level, got.enabled, want.enabled)
	}
	if got.err != want.err {
		t.Errorf("Handle error = %v, slog returns %v", got.err, want.err)
	}
	if len(got.writes) != len(want.writes) {
		t.Fatalf("%d Write calls, slog makes %d:\n got %q\nwant %q", len(got.writes), len(want.writes), got.writes, want.writes)
	}
	for i := range want.writes {
		if !bytes.Equal(got.writes[i], want.writes[i]) {
			t.Errorf("output differs from slog:\n got %s\nwant %s\n got %q\nwant %q", got.writes[i], want.writes[i], got.writes[i], want.writes[i])
		}
	}
}

// isFast reports whether Handle takes the fast path for r on a handler
// without WithAttrs/WithGroup history.
func isFast(r slog.Record) bool {
	_, ok := appendRecord(nil, &r)
	return ok
}

var (
	t0     = time.Date(2024, 3, 5, 7, 8, 9, 123456789, time.UTC)
	tZone  = time.Date(2024, 3, 5, 7, 8, 9, 120000000, time.FixedZone("X", -(3*3600+30*60)))
	tWhole = time.Date(1999, 12, 31, 23, 59, 59, 0, time.FixedZone("Y", 5*3600+45*60))
)

// Test types for KindAny values.

type plainErr struct{ msg string }

func (e *plainErr) Error() string { return e.msg }

type marshalErr struct{}

func (marshalErr) Error() string                { return "as error" }
func (marshalErr) MarshalJSON() ([]byte, error) { return []byte(`{"as":"marshaler"}`), nil }

type rawMarshaler string

func (m rawMarshaler) MarshalJSON() ([]byte, error) { return []byte(m), nil }

type failingMarshaler struct{}

func (failingMarshaler) MarshalJSON() ([]byte, error) { return nil, errors.New("boom <&>") }

type panickyMarshaler struct{}

func (panickyMarshaler) MarshalJSON() ([]byte, error) { panic("marshal panic") }

type textM struct{ s string }

func (t textM) MarshalText() ([]byte, error) { return []byte("text:" + t.s), nil }

type logValuer struct{ v slog.Value }

func (l logValuer) LogValue() slog.Value { return l.v }

type panickyLogValuer struct{}

func (panickyLogValuer) LogValue() slog.Value { panic("log value panic") }

func rec(tm time.Time, level slog.Level, msg string, attrs ...slog.Attr) slog.Record {
	r := slog.NewRecord(tm, level, msg, 0)
	r.AddAttrs(attrs...)
	return r
}

func TestMatchesSlog(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	var nilErr *plainErr
	src := &slog.Source{Function: "main.f", File: "/a/b.go", Line: 7}
	year10000 := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	yearMinus1 := time.Date(-1, 12, 31, 23, 59, 59, 0, time.UTC)
	tests := []struct {
		name string
		fast bool // whether the fast path handles it (only without ops)
		ops  []hop
		r    slog.Record
	}{
		// The fast path.
		{"empty", true, nil, rec(time.Time{}, slog.LevelInfo, "")},
		{"msg", true, nil, rec(t0, slog.LevelInfo, "hello")},
		{"zero record time", true, nil, rec(time.Time{}, slog.LevelInfo, "m", slog.Int("a", 1))},
		{"zone", true, nil, rec(tZone, slog.LevelInfo, "m")},
		{"whole seconds", true, nil, rec(tWhole, slog.LevelInfo, "m")},
		{"monotonic", true, nil, rec(time.Now(), slog.LevelInfo, "m")},
		{"local", true, nil, rec(time.Unix(1700000000, 5).Local(), slog.LevelInfo, "m")},
		{"year 0", true, nil, rec(time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), slog.LevelInfo, "m")},
		{"year 9999", true, nil, rec(time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), slog.LevelInfo, "m")},
		{"debug", true, nil, rec(t0, slog.LevelDebug, "m")},
		{"warn", true, nil, rec(t0, slog.LevelWarn, "m")},
		{"error", true, nil, rec(t0, slog.LevelError, "m")},
		{"level 2", true, nil, rec(t0, slog.Level(2), "m")},
		{"level -9", true, nil, rec(t0, slog.Level(-9), "m")},
		{"level 13", true, nil, rec(t0, slog.Level(13), "m")},
		{"strings", true, nil, rec(t0, slog.LevelInfo, "m\n\"q\"\\ <b>&amp;",
			slog.String("s", "plain"),
			slog.String("esc", "a\"b\\c\nd\re\tf\x00g\x1fh\x7fi"),
			slog.String("html", "<script>&</script>"),
			slog.String("seps", "a\u2028b\u2029c"),
			slog.String("bad utf8", "a\xffb\xc3(c\xed\xa0\x80d\xf0\x9f"),
			slog.String("unicode", "héllo, 世界 🙂 \ufffd"),
			slog.String("empty", ""),
			slog.String("k\u2028\"ey\x01\xff", "v"),
		)},
		{"ints", true, nil, rec(t0, slog.LevelInfo, "m",
			slog.Int("zero", 0), slog.Int64("min", math.MinInt64), slog.Int64("max", math.MaxInt64),
			slog.Uint64("umax", math.MaxUint64), slog.Uint64("u", 12345), slog.Bool("t", true), slog.Bool("f", false),
		)},
		{"floats", true, nil, rec(t0, slog.LevelInfo, "m",
			slog.Float64("zero", 0), slog.Float64("negzero", math.Copysign(0, -1)), slog.Float64("f", 0.123),
			slog.Float64("big", 1e21), slog.Float64("bigish", 1e20), slog.Float64("below 1e21", 999999999999999900000),
			slog.Float64("bigneg", -1.5e300), slog.Float64("small", 1e-6), slog.Float64("below 1e-6", 9.999999999999999e-7),
			slog.Float64("smaller", 1e-7), slog.Float64("neg small", -1e-7), slog.Float64("tiny", 5e-324),
			slog.Float64("max", math.MaxFloat64), slog.Float64("int", 123456789), slog.Float64("third", 1.0/3),
			slog.Float64("e-10", 1.5e-10), slog.Float64("e-100", 2e-100), slog.Float64("e+100", 2e100),
			slog.Float64("2^53+1", 1<<53+1), slog.Float64("max int64", math.MaxInt64),
		)},
		{"durations", true, nil, rec(t0, slog.LevelInfo, "m",
			slog.Duration("d", 1500*time.Millisecond), slog.Duration("neg", -time.Nanosecond),
			slog.Duration("zero", 0), slog.Duration("max", math.MaxInt64), slog.Duration("min", math.MinInt64),
		)},
		{"times", true, nil, rec(t0, slog.LevelInfo, "m",
			slog.Time("t", t0), slog.Time("zone", tZone), slog.Time("whole", tWhole), slog.Time("zero", time.Time{}),
			slog.Time("mono", time.Now()), slog.Time("local", time.Unix(1700000000, 5).Local()),
			slog.Time("far zone", time.Date(2024, 1, 1, 0, 0, 0, 1, time.FixedZone("Z", 14*3600))),
			slog.Time("year 2300", time.Date(2300, 1, 1, 0, 0, 0, 5, tZone.Location())), // beyond UnixNano
			slog.Time("year 0", time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)),
		)},
		{"the request line", true, nil, benchRecord()},
		{"long", true, nil, rec(t0, slog.LevelInfo, strings.Repeat("m\x01é", 5000), slog.String(strings.Repeat("k", 3000), strings.Repeat("\"v\u2028", 5000)))},

		// Records handed to slog.
		{"year 10000", false, nil, rec(year10000, slog.LevelInfo, "m")},
		{"year -1", false, nil, rec(yearMinus1, slog.LevelInfo, "m", slog.Int("a", 1))},
		{"attr year 10000", false, nil, rec(t0, slog.LevelInfo, "m", slog.Int("a", 1), slog.Time("t", year10000))},
		{"attr year -1", false, nil, rec(time.Time{}, slog.LevelInfo, "m", slog.Time("t", yearMinus1), slog.Int("a", 1))},
		{"empty key", false, nil, rec(t0, slog.LevelInfo, "m", slog.String("s", "x"), slog.String("", "empty key"))},
		{"empty key int", false, nil, rec(t0, slog.LevelInfo, "m", slog.Int("", 1))},
		{"nan", false, nil, rec(t0, slog.LevelInfo, "m", slog.Float64("nan", nan), slog.Int("after", 1))},
		{"inf", false, nil, rec(t0, slog.LevelInfo, "m", slog.Int("before", 1), slog.Float64("inf", inf))},
		{"-inf", false, nil, rec(t0, slog.LevelInfo, "m", slog.Float64("-inf", -inf))},
		{"any", false, nil, rec(t0, slog.LevelInfo, "m",
			slog.Int("first", 1),
			slog.Any("nil", nil),
			slog.Any("err", errors.New("bad <thing> & \u2028")),
			slog.Any("nil err", nilErr),
			slog.Any("marshal err", marshalErr{}),
			slog.Any("raw", rawMarshaler(` { "a" : [1, 2,3] , "h":"<&>" } `)),
			slog.Any("failing", failingMarshaler{}),
			slog.Any("panicky", panickyMarshaler{}),
			slog.Any("text", textM{"<x>"}),
			slog.Any("bytes", []byte("hi\x00<>")),
			slog.Any("map", map[string]any{"b": 1, "a": "<x>", "c": []int{1}}),
			slog.Any("float32", float32(0.1)),
			slog.Any("level", slog.LevelWarn),
			slog.Any("", nil),
			slog.Attr{},
			slog.Any("last", "x"),
		)},
		{"only empty attrs", false, nil, rec(t0, slog.LevelInfo, "m", slog.Attr{}, slog.Any("", nil))},
		{"source", false, nil, rec(t0, slog.LevelInfo, "m",
			slog.Any("src", src), slog.Any("empty src", &slog.Source{}), slog.Any("", src),
		)},
		{"groups", false, nil, rec(t0, slog.LevelInfo, "m",
			slog.Int("a", 1),
			slog.Group("g", slog.Int("b", 2), slog.Group("h", slog.String("c", "x")), slog.Group("empty")),
			slog.Group("", slog.Int("inlined", 3)),
			slog.Int("z", 9),
		)},
		{"empty group (dropped by AddAttrs)", true, nil, rec(t0, slog.LevelInfo, "m", slog.Int("a", 1), slog.Group("g"), slog.Int("b", 2))},
		{"group of empty attrs", false, nil, rec(t0, slog.LevelInfo, "m", slog.Int("a", 1), slog.Group("g", slog.Attr{}), slog.Int("b", 2))},
		{"log valuers", false, nil, rec(t0, slog.LevelInfo, "m",
			slog.Any("lv", logValuer{slog.StringValue("resolved")}),
			slog.Any("lv group", logValuer{slog.GroupValue(slog.Int("x", 1), slog.Any("y", logValuer{slog.IntValue(2)}))}),
			slog.Any("lv float", logValuer{slog.Float64Value(1.5)}),
			slog.Int("after", 1),
		)},
		{"log valuer panic", false, nil, rec(t0, slog.LevelInfo, "m", slog.Any("p", panickyLogValuer{}))},
		{"any time (KindTime)", true, nil, rec(t0, slog.LevelInfo, "m", slog.Any("t", t0))},

		// Derived handlers: slog's own.
		{"with attrs", false, []hop{withAttrs(slog.String("svc", "tokend"), slog.Int("pid", 7))},
			rec(t0, slog.LevelInfo, "m", slog.Int("a", 1))},
		{"with attrs, no record attrs", false, []hop{withAttrs(slog.String("svc", "tokend"))}, rec(t0, slog.LevelInfo, "m")},
		{"with group", false, []hop{withGroup("g")}, rec(t0, slog.LevelInfo, "m", slog.Int("a", 1))},
		{"with group, no record attrs", false, []hop{withGroup("g")}, rec(t0, slog.LevelInfo, "m")},
		{"with empty group name", false, []hop{withGroup("")}, rec(t0, slog.LevelInfo, "m", slog.Int("a", 1))},
		{"attrs none", false, []hop{withAttrs()}, rec(t0, slog.LevelInfo, "m", slog.Int("z", 3))},
		{"attrs only empty groups", false, []hop{withAttrs(slog.Group("e"))}, rec(t0, slog.LevelInfo, "m", slog.Int("z", 3))},
		{"group attrs group", false, []hop{withGroup("a"), withAttrs(slog.Int("x", 1)), withGroup("b")},
			rec(t0, slog.LevelInfo, "m", slog.Int("y", 2))},
		{"attrs with any", false, []hop{withAttrs(slog.Any("err", errors.New("e")), slog.Any("src", src),
			slog.Group("g", slog.Any("raw", rawMarshaler(` [1, 2] `)), slog.Any("nan", nan)))},
			rec(t0, slog.LevelInfo, "m", slog.Int("z", 3))},
		{"attrs with log valuer", false, []hop{withGroup("a"), withAttrs(slog.Any("lv", logValuer{slog.StringValue("x")})), withGroup("b")},
			rec(t0, slog.LevelInfo, "m", slog.Any("lv", logValuer{slog.IntValue(1)}))},
		{"the request line, with group", false, []hop{withGroup("req")}, benchRecord()},
		{"the request line, year 10000, with attrs", false, []hop{withAttrs(slog.Time("t", year10000))}, benchRecord()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.ops == nil {
				if got := isFast(tt.r); got != tt.fast {
					t.Errorf("fast path taken: %v, want %v", got, tt.fast)
				}
			}
			compare(t, tt.ops, tt.r, nil)
		})
	}
}

// TestEscapeEveryPosition puts every byte value, and the runes that slog
// escapes or replaces, at every position of a string in the message, a key
// and a value.
func TestEscapeEveryPosition(t *testing.T) {
	specials := []string{"\u2028", "\u2029", "\ufffd", "é", "\xc3", "\xe2\x80", "\xed\xa0\x80", "🙂", "\xf0\x9f\x99"}
	for c := range 256 {
		specials = append(specials, string([]byte{byte(c)}))
	}
	for _, sp := range specials {
		for pos := range 10 {
			v := strings.Repeat("a", pos) + sp + strings.Repeat("b", 9-pos)
			r := rec(time.Time{}, slog.LevelInfo, v, slog.String(v, v))
			if !isFast(r) {
				t.Fatalf("%q not on the fast path", v)
			}
			compare(t, nil, r, nil)
		}
	}
}

// TestFloats compares the fast path's float formatting with json.Marshal,
// which slog uses, on random and boundary values.
func TestFloats(t *testing.T) {
	fs := []float64{0, math.Copysign(0, -1), 1e21, math.Nextafter(1e21, 0), 1e-6, math.Nextafter(1e-6, 0),
		1e-7, 5e-324, math.MaxFloat64, math.SmallestNonzeroFloat64, 0.1, 1.0 / 3, 100, 1e20, 123456789e-15}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		fs = append(fs, math.Float64frombits(rng.Uint64()), rng.NormFloat64()*math.Pow10(rng.IntN(60)-30))
	}
	for _, f := range fs {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			continue
		}
		want, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendFloat(nil, f); !bytes.Equal(got, want) {
			t.Errorf("appendFloat(%v) = %s, json.Marshal gives %s", f, got, want)
		}
	}
}

// counter counts the calls slog makes to user code.
type counter struct{ marshal, errorCalls, logValue *int }

type countingMarshaler struct{ c counter }

func (m countingMarshaler) MarshalJSON() ([]byte, error) {
	*m.c.marshal++
	return []byte(strconv.Itoa(*m.c.marshal)), nil
}

type countingErr struct{ c counter }

func (e countingErr) Error() string {
	*e.c.errorCalls++
	return "error " + strconv.Itoa(*e.c.errorCalls)
}

type countingLogValuer struct{ c counter }

func (l countingLogValuer) LogValue() slog.Value {
	*l.c.logValue++
	return slog.IntValue(*l.c.logValue)
}

// TestUserCodeCalls checks that the handler calls MarshalJSON, Error and
// LogValue as often as slog does: the fast path must call none of them
// before it hands a record to slog.
func TestUserCodeCalls(t *testing.T) {
	run := func(newH func(io.Writer) slog.Handler) (string, [3]int) {
		var n [3]int
		c := counter{&n[0], &n[1], &n[2]}
		var buf bytes.Buffer
		root := newH(&buf)
		for _, h := range []slog.Handler{root, root.WithAttrs([]slog.Attr{slog.Any("e", countingErr{c})}).WithGroup("g")} {
			h.Handle(context.Background(), rec(t0, slog.LevelInfo, "m", slog.Int("a", 1), slog.Any("m", countingMarshaler{c}), slog.Any("e", countingErr{c})))
			h.Handle(context.Background(), rec(t0, slog.LevelInfo, "m", slog.Int("a", 1), slog.Any("lv", countingLogValuer{c})))
			h.Handle(context.Background(), rec(t0, slog.LevelInfo, "m", slog.Group("g", slog.Any("lv", countingLogValuer{c}))))
		}
		return buf.String(), n
	}
	wantOut, wantN := run(newSlog)
	gotOut, gotN := run(NewHandler)
	if gotN != wantN {
		t.Errorf("MarshalJSON, Error, LogValue called %v times, slog calls them %v times", gotN, wantN)
	}
	if gotOut != wantOut {
		t.Errorf("got\n%s\nwant\n%s", gotOut, wantOut)
	}
}

func TestWriteError(t *testing.T) {
	werr := errors.New("disk full")
	compare(t, nil, rec(t0, slog.LevelInfo, "m", slog.Int("a", 1)), werr)
	compare(t, nil, rec(t0, slog.LevelInfo, "m", slog.Any("err", errors.New("e"))), werr)
	compare(t, []hop{withGroup("g")}, rec(t0, slog.LevelInfo, "m", slog.Int("a", 1)), werr)
}

// TestLogger checks the handler behind a slog.Logger, including the level
// filtering done by Enabled.
func TestLogger(t *testing.T) {
	var got, want bytes.Buffer
	use := func(l *slog.Logger) {
		l.Debug("filtered", "a", 1)
		l.Info("info", "a", 1, "b", "two", "c", 3.5)
		l.Info("group", "a", 1, slog.Group("g", "c", 3.5))
		l.Log(context.Background(), slog.Level(2), "custom", "err", errors.New("x"))
		l.With("svc", "tokend").WithGroup("req").Warn("warn", "n", uint64(5), "k", struct{ A int }{1})
		l.WithGroup("").With().Error("error")
		l.LogAttrs(context.Background(), slog.LevelDebug-1, "filtered too")
	}
	use(slog.New(slog.NewJSONHandler(&want, nil)))
	use(slog.New(NewHandler(&got)))
	// Logger stamps records with time.Now; drop the times before comparing.
	strip := func(b []byte) string {
		var out []string
		for _, line := range strings.SplitAfter(string(b), "\n") {
			if i := strings.Index(line, `"level"`); i > 0 {
				line = "{" + line[i:]
			}
			out = append(out, line)
		}
		return strings.Join(out, "")
	}
	if strip(got.Bytes()) != strip(want.Bytes()) {
		t.Errorf("got\n%s\nwant\n%s", got.Bytes(), want.Bytes())
	}
	if n := strings.Count(got.String(), "\n"); n != 5 {
		t.Errorf("%d lines, want 5:\n%s", n, got.Bytes())
	}
}

// fuzzGen builds attributes, handlers and records from fuzz input.
type fuzzGen struct {
	prog   []byte
	pos    int
	strs   []string
	fl     float64
	n      int64
	u      uint64
	simple bool // only attrs of simple kinds, so mostly fast-path records
}

func (g *fuzzGen) next() byte {
	if g.pos >= len(g.prog) {
		return 0
	}
	b := g.prog[g.pos]
	g.pos++
	return b
}

func (g *fuzzGen) str() string { return g.strs[int(g.next())%len(g.strs)] }

func (g *fuzzGen) float() float64 {
	switch g.next() % 10 {
	case 0:
		return g.fl
	case 1:
		return float64(g.n)
	case 2:
		return math.Float64frombits(g.u)
	case 3:
		return math.NaN()
	case 4:
		return math.Inf(1 - 2*int(g.next()%2))
	case 5:
		return math.Copysign(0, -1)
	case 6:
		return g.fl * math.Pow10(int(int8(g.next())))
	case 7:
		return float64(float32(g.fl))
	case 8:
		return 1 / g.fl
	default:
		return float64(g.next()) / 1000
	}
}

func (g *fuzzGen) time() time.Time {
	switch g.next() % 6 {
	case 0:
		return time.Time{}
	case 1:
		return time.Unix(g.n, int64(g.u%1e9)).UTC()
	case 2:
		return time.Unix(g.n%(1<<40), int64(g.u%1e9)).In(time.FixedZone("Z", int(int16(g.u>>32))*60))
	case 3:
		return time.Unix(0, g.n).UTC()
	case 4:
		return time.Date(int(int16(g.n)), time.Month(g.next()%12+1), int(g.next()%28+1), 0, 0, 0, int(g.u%1e9), time.UTC)
	default:
		return t0.Add(time.Duration(g.n))
	}
}

func (g *fuzzGen) value(depth int) slog.Value {
	k := g.next() % 16
	if g.simple {
		k %= 8
	}
	switch k {
	case 0, 1:
		return slog.StringValue(g.str())
	case 2:
		return slog.Int64Value(g.n ^ int64(g.next()))
	case 3:
		return slog.Uint64Value(g.u ^ uint64(g.next()))
	case 4:
		return slog.Float64Value(g.float())
	case 5:
		return slog.BoolValue(g.next()%2 == 0)
	case 6:
		return slog.DurationValue(time.Duration(g.n))
	case 7:
		return slog.TimeValue(g.time())
	case 8:
		return slog.GroupValue(g.attrs(depth + 1)...)
	case 9:
		return slog.AnyValue(g.any(depth))
	case 10:
		return slog.AnyValue(logValuer{g.value(depth + 1)})
	default:
		return slog.StringValue(g.str())
	}
}

func (g *fuzzGen) any(depth int) any {
	switch g.next() % 12 {
	case 0:
		return nil
	case 1:
		return errors.New(g.str())
	case 2:
		return (*plainErr)(nil)
	case 3:
		return map[string]any{g.str(): g.float(), g.str(): g.n}
	case 4:
		return []byte(g.str())
	case 5:
		return struct {
			S string
			F float64
			T time.Time
		}{g.str(), g.float(), g.time()}
	case 6:
		return rawMarshaler(g.str())
	case 7:
		return &slog.Source{Function: g.str(), File: g.str(), Line: int(g.next() % 3)}
	case 8:
		return panickyMarshaler{}
	case 9:
		return textM{g.str()}
	case 10:
		if depth < 2 && g.next()%4 == 0 {
			return panickyLogValuer{}
		}
		return g.str()
	default:
		return g.time()
	}
}

func (g *fuzzGen) attr(depth int) slog.Attr {
	k := g.next() % 12
	if g.simple {
		k = 3
	}
	switch k {
	case 0:
		return slog.Attr{}
	case 1:
		return slog.Any("", nil)
	case 2:
		return slog.Attr{Key: g.str(), Value: slog.GroupValue(g.attrs(depth + 1)...)}
	default:
		return slog.Attr{Key: g.str(), Value: g.value(depth)}
	}
}

func (g *fuzzGen) attrs(depth int) []slog.Attr {
	if depth > 4 {
		return nil
	}
	n := int(g.next() % 10)
	as := make([]slog.Attr, 0, n)
	for range n {
		as = append(as, g.attr(depth))
	}
	return as
}

// wantFast is the rule for the fast path, written independently of the
// handler.
func wantFast(r slog.Record) bool {
	inRange := func(t time.Time) bool { return t.Year() >= 0 && t.Year() <= 9999 }
	if !r.Time.IsZero() && !inRange(r.Time) {
		return false
	}
	ok := true
	r.Attrs(func(a slog.Attr) bool {
		switch v := a.Value; {
		case a.Key == "":
			ok = false
		case v.Kind() == slog.KindFloat64:
			ok = !math.IsNaN(v.Float64()) && !math.IsInf(v.Float64(), 0)
		case v.Kind() == slog.KindTime:
			ok = inRange(v.Time())
		default:
			ok = v.Kind() != slog.KindAny && v.Kind() != slog.KindGroup && v.Kind() != slog.KindLogValuer
		}
		return ok
	})
	return ok
}

func FuzzHandlerMatchesSlog(f *testing.F) {
	f.Add([]byte{}, "", 0.0, int64(0), uint64(0))
	f.Add([]byte{0, 1, 0, 9, 1, 0, 2, 1, 1, 2, 2, 3, 3, 4, 4, 0, 5, 5, 2, 6, 6, 7, 7, 1}, "k|v|<&>|\u2028", 0.123, int64(1700000000), uint64(12345))
	f.Add([]byte{0, 4, 0, 9, 1, 4, 2, 6, 3, 4, 6, 4, 250, 5, 4, 7, 6, 4, 8, 7, 4, 2, 8, 4, 5}, "a|b", 1.5e-7, int64(1<<53+1), uint64(math.MaxUint64))
	f.Add([]byte{0, 4, 0, 9, 1, 7, 4, 2, 7, 2, 3, 7, 1, 4, 7, 5, 5, 7, 3, 6, 6, 0}, "x|y|z", 1e21, int64(253402300799), uint64(999999999))
	f.Add([]byte{0, 4, 1, 5, 1, 7, 4, 2, 7, 5}, "k", 1e-7, int64(-62167219201), uint64(7))
	f.Add([]byte{1, 2, 0, 1, 3, 1, 5, 4, 2, 3, 1, 4, 0}, "k|v|<&>|\u2028", 0.123, int64(1700000000), uint64(12345))
	f.Add([]byte{1, 2, 1, 1, 2, 2, 2, 0, 8, 3, 2, 9, 3, 4, 10, 4, 7, 1, 8, 5, 12, 11, 6, 9, 7, 3}, "a|b\x00|\xff|g", math.NaN(), int64(-5), uint64(math.MaxUint64))
	f.Add([]byte{1, 3, 0, 9, 1, 1, 7, 4, 3, 14, 2, 9, 12, 1, 8, 0, 2, 6, 5, 3, 3, 2, 1, 9}, "x|y|z", 1e21, int64(math.MinInt64), uint64(1<<63))
	f.Add([]byte{1, 5, 1, 0, 3, 2, 2, 1, 3, 0, 5, 0, 2, 1, 4, 10, 8, 6, 3, 2}, "|", 1e-7, int64(253402300800), uint64(999999999))
	f.Fuzz(func(t *testing.T, prog []byte, strs string, fl float64, n int64, u uint64) {
		pool := append([]string{"", strs, "<&>", "\u2028\u2029", "a\xffb", "\"\\\n\x01", "k"}, strings.Split(strs, "|")...)
		g := &fuzzGen{prog: prog, strs: pool, fl: fl, n: n, u: u}
		g.simple = g.next()%2 == 0
		var ops []hop
		if !g.simple {
			for range g.next() % 4 {
				if g.next()%2 == 0 {
					ops = append(ops, withGroup(g.str()))
				} else {
					ops = append(ops, withAttrs(g.attrs(1)...))
				}
			}
		}
		r := rec(g.time(), slog.Level(int8(g.next())), g.str(), g.attrs(0)...)
		if got, want := isFast(r), wantFast(r); got != want {
			t.Errorf("fast path taken: %v, want %v: %v", got, want, r)
		}
		compare(t, ops, r, nil)
	})
}

// lineWriter is a plain bytes.Buffer that counts Write calls: not safe for
// concurrent use, so the race detector flags any Write calls the handlers
// fail to serialize.
type lineWriter struct {
	buf    bytes.Buffer
	writes int
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.buf.Write(p)
}

// TestConcurrent mixes fast-path records, records handed to slog and derived
// (slog) handlers on one writer.
func TestConcurrent(t *testing.T) {
	w := &lineWriter{}
	root := NewHandler(w)
	handlers := []slog.Handler{
		root,
		root.WithAttrs([]slog.Attr{slog.String("svc", "tokend")}),
		root.WithGroup("g").WithAttrs([]slog.Attr{slog.Any("err", errors.New("e"))}),
	}
	const goroutines, perG = 16, 300
	var wg sync.WaitGroup
	for i := range goroutines {
		wg.Go(func() {
			for j := range perG {
				h := handlers[(i+j)%len(handlers)]
				r := benchRecord()
				r.AddAttrs(slog.Int("g", i), slog.Int("j", j), slog.String("pad", strings.Repeat("x", j*10)))
				if j%4 == 0 {
					r.AddAttrs(slog.Any("err", fmt.Errorf("handed to slog %d", j)))
				}
				if err := h.Handle(context.Background(), r); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if w.writes != goroutines*perG {
		t.Errorf("%d Write calls, want %d", w.writes, goroutines*perG)
	}
	sc := bufio.NewScanner(&w.buf)
	sc.Buffer(nil, 1<<20)
	lines := 0
	for sc.Scan() {
		lines++
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d is not JSON (%v): %s", lines, err, sc.Bytes())
		}
		if g, ok := m["g"].(map[string]any); ok {
			m = g
		}
		if pad, _ := m["pad"].(string); len(pad)%10 != 0 || len(pad) != 10*int(m["j"].(float64)) {
			t.Fatalf("line %d is garbled: %s", lines, sc.Bytes())
		}
	}
	if lines != goroutines*perG {
		t.Errorf("%d lines, want %d", lines, goroutines*perG)
	}
}

func benchRecord() slog.Record {
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
	r.AddAttrs(
		slog.String("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"), slog.String("transport", "http"),
		slog.String("method", "GET"), slog.String("route", "/api/v1/me/tokens/{token_id}"),
		slog.Int("status", 200), slog.Float64("latency_ms", 0.123),
		slog.String("client", "127.0.0.1"), slog.Uint64("token_id", 12345), slog.String("user", "user-17"),
	)
	return r
}

// TestHandleAllocatesNothing pins the fast path's whole cost in
// allocations: none. CI runs it without -race (go test -run Allocat).
func TestHandleAllocatesNothing(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("coverage and race instrumentation change allocation counts")
	}
	h := NewHandler(io.Discard)
	r := benchRecord()
	if !isFast(r) {
		t.Fatal("the request record is not on the fast path")
	}
	ctx := context.Background()
	h.Handle(ctx, r) // warm the pool
	if n := testing.AllocsPerRun(1000, func() { h.Handle(ctx, r) }); n != 0 {
		t.Errorf("Handle allocates %v times per record, want 0", n)
	}
}

func BenchmarkHandle(b *testing.B) {
	ctx := context.Background()
	for _, bm := range []struct {
		name string
		h    slog.Handler
	}{
		{"logjson", NewHandler(io.Discard)},
		{"slog", slog.NewJSONHandler(io.Discard, nil)},
	} {
		b.Run(bm.name, func(b *testing.B) {
			r := benchRecord()
			b.ReportAllocs()
			for b.Loop() {
				if err := bm.h.Handle(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
