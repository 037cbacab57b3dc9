package config

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
)

func TestLoad(t *testing.T) {
	t.Parallel()

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		c, err := LoadFrom(context.Background(), envconfig.MapLookuper(map[string]string{
			"DATABASE_URL": "postgres://localhost/app",
		}))
		if err != nil {
			t.Fatal(err)
		}
		if c.API.Port != 9001 || c.Processor.Port != 9002 {
			t.Errorf("ports = %d, %d", c.API.Port, c.Processor.Port)
		}
		if c.API.SubmitRate != 200 || c.API.SubmitBurst != 400 || c.API.MaxActiveRequests != 50000 {
			t.Errorf("limits = %+v", c.API)
		}
		if c.Processor.ModelTimeout != time.Hour {
			t.Errorf("model timeout = %v", c.Processor.ModelTimeout)
		}
		want := []time.Duration{0, 5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute, 30 * time.Minute}
		if len(c.Webhook.Schedule) != len(want) {
			t.Fatalf("schedule = %v", c.Webhook.Schedule)
		}
		for i := range want {
			if c.Webhook.Schedule[i] != want[i] {
				t.Errorf("schedule[%d] = %v, want %v", i, c.Webhook.Schedule[i], want[i])
			}
		}
	})

	t.Run("DBVariables", func(t *testing.T) {
		t.Parallel()
		c, err := LoadFrom(context.Background(), envconfig.MapLookuper(map[string]string{
			"DB_HOST": "db.internal", "DB_PORT": "6543", "DB_USER": "svc", "DB_PASSWORD": "p@ss", "DB_NAME": "queue",
		}))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := c.Database.ConnString()
		if want := "postgres://svc:p%40ss@db.internal:6543/queue"; got != want {
			t.Errorf("ConnString = %q, want %q", got, want)
		}
	})

	errTests := []struct {
		name    string
		env     map[string]string
		mention string
	}{
		{"NoDatabase", map[string]string{}, "DATABASE_URL"},
		{"BadDatabaseURL", map[string]string{"DATABASE_URL": "mysql://x"}, "DATABASE_URL"},
		{"BadDuration", map[string]string{"DATABASE_URL": "postgres://x/y", "MODEL_TIMEOUT": "soon"}, "MODEL_TIMEOUT"},
		{"BadPort", map[string]string{"DATABASE_URL": "postgres://x/y", "API_PORT": "70000"}, "API_PORT"},
		{"BadRate", map[string]string{"DATABASE_URL": "postgres://x/y", "ORG_SUBMIT_RATE": "0"}, "ORG_SUBMIT_RATE"},
		{"BadLogFormat", map[string]string{"DATABASE_URL": "postgres://x/y", "LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{"ShortCredentialKey", map[string]string{"DATABASE_URL": "postgres://x/y", "UPSTREAM_CREDENTIAL_KEYS": "c2l4dGVlbiBieXRlIGtleQ=="}, "UPSTREAM_CREDENTIAL_KEYS"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := LoadFrom(context.Background(), envconfig.MapLookuper(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error = %v, want one naming %s", err, tt.mention)
			}
			if v := tt.env["UPSTREAM_CREDENTIAL_KEYS"]; v != "" && strings.Contains(err.Error(), v) {
				t.Errorf("error shows the key: %q", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}
