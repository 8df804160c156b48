package main

import (
	"math"
	"slices"
	"strconv"
	"time"
)

// percentile returns the p-th quantile (0 ≤ p ≤ 1) of sorted values by
// linear interpolation between closest ranks (R-7, numpy's default). It
// returns NaN for no values.
func percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	switch {
	case n == 0:
		return math.NaN()
	case n == 1 || p <= 0:
		return sorted[0]
	case p >= 1:
		return sorted[n-1]
	}
	pos := p * float64(n-1)
	lo := int(math.Floor(pos))
	if lo >= n-1 {
		return sorted[n-1]
	}
	frac := pos - float64(lo)
	return sorted[lo] + frac*(sorted[lo+1]-sorted[lo])
}

// durationPercentile is percentile over sorted latencies, in microseconds.
func durationPercentile(sorted []time.Duration, p float64) float64 {
	n := len(sorted)
	switch {
	case n == 0:
		return math.NaN()
	case n == 1 || p <= 0:
		return us(sorted[0])
	case p >= 1:
		return us(sorted[n-1])
	}
	pos := p * float64(n-1)
	lo := int(math.Floor(pos))
	if lo >= n-1 {
		return us(sorted[n-1])
	}
	frac := pos - float64(lo)
	return us(sorted[lo]) + frac*(us(sorted[lo+1])-us(sorted[lo]))
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Summary is the median of per-round values and the range holding the
// middle 95% of them (2.5th to 97.5th percentile, interpolated). With
// few rounds that is close to the observed minimum and maximum.
type Summary struct {
	Median F   `json:"median"`
	Lo     F   `json:"p2_5"`
	Hi     F   `json:"p97_5"`
	Min    F   `json:"min"`
	Max    F   `json:"max"`
	N      int `json:"n"`
}

// summarize summarises per-round values; NaNs are ignored.
func summarize(values []float64) Summary {
	v := make([]float64, 0, len(values))
	for _, x := range values {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		nan := F(math.NaN())
		return Summary{Median: nan, Lo: nan, Hi: nan, Min: nan, Max: nan}
	}
	slices.Sort(v)
	return Summary{
		Median: F(percentile(v, 0.5)),
		Lo:     F(percentile(v, 0.025)),
		Hi:     F(percentile(v, 0.975)),
		Min:    F(v[0]),
		Max:    F(v[len(v)-1]),
		N:      len(v),
	}
}

// ratio is a/b, NaN when b is zero or either is NaN.
func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return math.NaN()
	}
	return a / b
}

// F is a float64 that is written to JSON as null when it is NaN or
// infinite (encoding/json refuses those), and rounded to 4 decimals.
type F float64

// MarshalJSON implements json.Marshaler.
func (f F) MarshalJSON() ([]byte, error) {
	x := float64(f)
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, math.Round(x*1e4)/1e4, 'f', -1, 64), nil
}

// UnmarshalJSON implements json.Unmarshaler; null is NaN.
func (f *F) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = F(math.NaN())
		return nil
	}
	x, err := strconv.ParseFloat(string(b), 64)
	*f = F(x)
	return err
}
