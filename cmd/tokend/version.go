package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// versionString describes this binary from the build information the Go
// toolchain embeds: module version, VCS revision and time when the build
// recorded them, and the Go version.
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "tokend (no build information)"
	}
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	var vcs []string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision", "vcs.time":
			vcs = append(vcs, s.Value)
		case "vcs.modified":
			if s.Value == "true" {
				vcs = append(vcs, "modified")
			}
		}
	}
	out := fmt.Sprintf("tokend %s %s", version, bi.GoVersion)
	if len(vcs) > 0 {
		out += " (" + strings.Join(vcs, ", ") + ")"
	}
	return out
}
