package testutil

import (
	"os"
	"strings"
)

// ChildEnv is the environment for a tokend server started by a test or the
// benchmark: this process's, without the TOKEND_* and OTEL_* settings that
// would change what its flags say (a developer's exported
// OTEL_EXPORTER_OTLP_ENDPOINT would turn tracing on).
func ChildEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TOKEND_") && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	return env
}
