package telemetry

import (
	"strings"
	"testing"
)

func TestSamplerFromEnv(t *testing.T) {
	// Not parallel: it sets the process environment.
	tests := []struct {
		sampler, arg string
		want         string // Description, "" for none, "error" for an error
	}{
		{"", "", ""},
		{"always_on", "", ""},
		{"traceidratio", "0.25", "RequestIDRatio{0.25}"},
		{"parentbased_traceidratio", "", "RequestIDRatio{1}"},
		{"traceidratio", "2", "error"},
		{"traceidratio", "half", "error"},
	}
	for _, tt := range tests {
		t.Setenv("OTEL_TRACES_SAMPLER", tt.sampler)
		t.Setenv("OTEL_TRACES_SAMPLER_ARG", tt.arg)
		s, err := samplerFromEnv()
		switch {
		case tt.want == "error":
			if err == nil || !strings.HasPrefix(err.Error(), "OTEL_TRACES_SAMPLER_ARG:") {
				t.Errorf("%s %q: error = %v, want one naming OTEL_TRACES_SAMPLER_ARG", tt.sampler, tt.arg, err)
			}
		case err != nil:
			t.Errorf("%s %q: %v", tt.sampler, tt.arg, err)
		case tt.want == "" && s != nil:
			t.Errorf("%s %q: sampler %s, want the SDK's", tt.sampler, tt.arg, s.Description())
		case tt.want != "" && (s == nil || s.Description() != tt.want):
			t.Errorf("%s %q: sampler %v, want %s", tt.sampler, tt.arg, s, tt.want)
		}
	}
}
