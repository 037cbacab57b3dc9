package config

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
)

func TestAPIServerLimits(t *testing.T) {
	t.Parallel()

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		c, err := LoadFrom(context.Background(), envconfig.MapLookuper(map[string]string{"DATABASE_URL": "postgres://localhost/app"}))
		if err != nil {
			t.Fatal(err)
		}
		want := APIServer{ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 75 * time.Second,
			IdleTimeout: time.Minute, MaxHeaderBytes: 64 << 10, MaxConns: 4096}
		if c.API.Server != want || c.API.AdminPort != 9005 {
			t.Errorf("server %+v, admin port %d; want %+v, 9005", c.API.Server, c.API.AdminPort, want)
		}
		// The long-poll (wait_seconds up to 60) must fit in one write.
		if c.API.Server.WriteTimeout <= 60*time.Second {
			t.Errorf("API_WRITE_TIMEOUT default %v leaves no room for a 60 s long-poll", c.API.Server.WriteTimeout)
		}
	})

	for _, name := range []string{"API_READ_HEADER_TIMEOUT", "API_READ_TIMEOUT", "API_WRITE_TIMEOUT", "API_IDLE_TIMEOUT",
		"API_MAX_HEADER_BYTES", "API_MAX_CONNS", "API_ADMIN_PORT"} {
		for _, value := range []string{"0", "-1", "soon"} {
			t.Run(name+"="+value, func(t *testing.T) {
				t.Parallel()
				_, err := LoadFrom(context.Background(), envconfig.MapLookuper(map[string]string{"DATABASE_URL": "postgres://x/y", name: value}))
				if name == "API_ADMIN_PORT" && value == "0" {
					if err != nil {
						t.Fatalf("API_ADMIN_PORT=0 (any free port): %v", err)
					}
					return
				}
				if err == nil || !strings.HasPrefix(err.Error(), "configuration: "+name+":") {
					t.Fatalf("error = %v, want one naming %s", err, name)
				}
			})
		}
	}
}
