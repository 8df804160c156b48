//go:build race

package logjson

// raceEnabled reports a -race build, whose sync.Pool drops items at random
// on purpose, so allocation counts are not the production ones.
const raceEnabled = true
