package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Standard Webhooks reference vector, from the test suites of the
// standard-webhooks libraries.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorMsgID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

	// vectorCompatSignature is HMAC-SHA256(key="whsec_MfKQ...", vectorBody)
	// in hex, computed with openssl dgst -sha256 -hmac.
	vectorCompatSignature = "v1=80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"

	requestID = "0190f5b0c2a87d3e9b1f4c6a2d8e0f11"
)

var vectorTime = time.Unix(vectorTimestamp, 0)

func TestSecret(t *testing.T) {
	t.Parallel()

	t.Run("GenerateIsValidAndRandom", func(t *testing.T) {
		t.Parallel()
		a, err := GenerateSecret()
		if err != nil {
			t.Fatal(err)
		}
		b, err := GenerateSecret()
		if err != nil {
			t.Fatal(err)
		}
		if a == b {
			t.Fatal("two generated secrets are equal")
		}
		if err := ValidSecret(a); err != nil {
			t.Fatalf("ValidSecret(%q) = %v", a, err)
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(a, SecretPrefix))
		if err != nil || len(key) != 32 {
			t.Fatalf("secret %q: key of %d bytes, %v; want 32 bytes", a, len(key), err)
		}
	})

	tests := []struct {
		name   string
		secret string
		valid  bool
	}{
		{"Vector", vectorSecret, true},
		{"Padded", "whsec_" + base64.StdEncoding.EncodeToString([]byte("sixteen byte key")), true},
		{"Unpadded", "whsec_" + base64.RawStdEncoding.EncodeToString([]byte("seventeen byte ke")), true},
		{"NoPrefix", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", false},
		{"WrongPrefix", "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", false},
		{"Empty", "", false},
		{"PrefixOnly", "whsec_", false},
		{"NotBase64", "whsec_not*base64!", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := ValidSecret(tt.secret)
			if tt.valid && err != nil {
				t.Fatalf("ValidSecret(%q) = %v, want nil", tt.secret, err)
			}
			if !tt.valid && !errors.Is(err, ErrInvalidSecret) {
				t.Fatalf("ValidSecret(%q) = %v, want ErrInvalidSecret", tt.secret, err)
			}
		})
	}
}

func TestSigner(t *testing.T) {
	t.Parallel()

	t.Run("StandardWebhooksVector", func(t *testing.T) {
		t.Parallel()
		h, err := Signer{Secrets: []string{vectorSecret}}.Headers(vectorMsgID, requestID, vectorTime, []byte(vectorBody))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"webhook-id":        vectorMsgID,
			"webhook-timestamp": "1614265330",
			"webhook-signature": vectorSignature,
		}
		for name, value := range want {
			if got := h.Get(name); got != value {
				t.Errorf("%s = %q, want %q", name, got, value)
			}
		}
	})

	t.Run("CompatVector", func(t *testing.T) {
		t.Parallel()
		h, err := Signer{Secrets: []string{vectorSecret}, Compat: true}.Headers(vectorMsgID, requestID, vectorTime, []byte(vectorBody))
		if err != nil {
			t.Fatal(err)
		}
		// Computed independently of the package: the key is the whole
		// secret string, prefix included, and the message is the body alone.
		m := hmac.New(sha256.New, []byte(vectorSecret))
		m.Write([]byte(vectorBody))
		independent := "v1=" + hex.EncodeToString(m.Sum(nil))
		if independent != vectorCompatSignature {
			t.Fatalf("independent HMAC %q differs from the recorded %q", independent, vectorCompatSignature)
		}
		if got := h.Get(HeaderCompatSignature); got != vectorCompatSignature {
			t.Errorf("%s = %q, want %q", HeaderCompatSignature, got, vectorCompatSignature)
		}
		if got := h.Get(HeaderCompatRequestID); got != requestID {
			t.Errorf("%s = %q, want %q", HeaderCompatRequestID, got, requestID)
		}
		if got := h.Get(HeaderSignature); got != vectorSignature {
			t.Errorf("%s = %q, want %q", HeaderSignature, got, vectorSignature)
		}
	})

	t.Run("CompatOff", func(t *testing.T) {
		t.Parallel()
		h, err := Signer{Secrets: []string{vectorSecret}}.Headers(vectorMsgID, requestID, vectorTime, []byte(vectorBody))
		if err != nil {
			t.Fatal(err)
		}
		for name := range h {
			if strings.HasPrefix(strings.ToUpper(name), "X-BASETEN") {
				t.Errorf("compat off, yet header %s = %q", name, h.Get(name))
			}
		}
	})

	t.Run("Rotation", func(t *testing.T) {
		t.Parallel()
		newSecret, err := GenerateSecret()
		if err != nil {
			t.Fatal(err)
		}
		h, err := Signer{Secrets: []string{vectorSecret, newSecret}, Compat: true}.Headers(vectorMsgID, requestID, vectorTime, []byte(vectorBody))
		if err != nil {
			t.Fatal(err)
		}
		standard := strings.Split(h.Get(HeaderSignature), " ")
		if len(standard) != 2 || standard[0] != vectorSignature {
			t.Fatalf("%s = %q, want two signatures starting with the vector", HeaderSignature, h.Get(HeaderSignature))
		}
		compat := strings.Split(h.Get(HeaderCompatSignature), ",")
		if len(compat) != 2 || compat[0] != vectorCompatSignature {
			t.Fatalf("%s = %q, want two signatures starting with the vector", HeaderCompatSignature, h.Get(HeaderCompatSignature))
		}
		for _, secret := range []string{vectorSecret, newSecret} {
			res, err := Verify([]string{secret}, h, []byte(vectorBody), vectorTime)
			if err != nil || !res.Standard || !res.Compat {
				t.Errorf("Verify with %q alone = %+v, %v; want both schemes", secret, res, err)
			}
		}
	})

	t.Run("NoSecrets", func(t *testing.T) {
		t.Parallel()
		if _, err := (Signer{}).Headers(vectorMsgID, requestID, vectorTime, nil); !errors.Is(err, ErrNoSecrets) {
			t.Fatalf("Headers with no secrets = %v, want ErrNoSecrets", err)
		}
	})

	t.Run("InvalidSecret", func(t *testing.T) {
		t.Parallel()
		_, err := Signer{Secrets: []string{vectorSecret, "bogus"}}.Headers(vectorMsgID, requestID, vectorTime, nil)
		if !errors.Is(err, ErrInvalidSecret) {
			t.Fatalf("Headers with an invalid secret = %v, want ErrInvalidSecret", err)
		}
	})
}

func TestVerify(t *testing.T) {
	t.Parallel()

	body := []byte(vectorBody)
	signed := func(t *testing.T, compat bool) http.Header {
		t.Helper()
		h, err := Signer{Secrets: []string{vectorSecret}, Compat: compat}.Headers(vectorMsgID, requestID, vectorTime, body)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	otherSecret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("another secret, 32 bytes long..."))

	tests := []struct {
		name    string
		header  func(t *testing.T) http.Header
		body    []byte
		secrets []string
		now     time.Time
		want    Result
		wantErr error
	}{
		{
			name:   "BothSchemes",
			header: func(t *testing.T) http.Header { return signed(t, true) },
			want:   Result{Standard: true, Compat: true},
		},
		{
			name:   "StandardOnly",
			header: func(t *testing.T) http.Header { return signed(t, false) },
			want:   Result{Standard: true},
		},
		{
			name: "CompatOnly",
			header: func(t *testing.T) http.Header {
				return http.Header{"X-Baseten-Signature": {vectorCompatSignature}}
			},
			want: Result{Compat: true},
		},
		{
			name: "LowercaseHeaderNamesAsFromAMap",
			header: func(t *testing.T) http.Header {
				h := make(http.Header)
				h.Set("webhook-id", vectorMsgID)
				h.Set("webhook-timestamp", "1614265330")
				h.Set("webhook-signature", "v0,bm90IGEgc2lnbmF0dXJl "+vectorSignature)
				return h
			},
			want: Result{Standard: true},
		},
		{
			name:    "AnySecretMatches",
			header:  func(t *testing.T) http.Header { return signed(t, true) },
			secrets: []string{otherSecret, vectorSecret},
			want:    Result{Standard: true, Compat: true},
		},
		{
			name:    "TamperedBody",
			header:  func(t *testing.T) http.Header { return signed(t, true) },
			body:    []byte(`{"test": 2432232315}`),
			wantErr: ErrNoMatchingSignature,
		},
		{
			name:    "WrongSecret",
			header:  func(t *testing.T) http.Header { return signed(t, true) },
			secrets: []string{otherSecret},
			wantErr: ErrNoMatchingSignature,
		},
		{
			name: "TamperedID",
			header: func(t *testing.T) http.Header {
				h := signed(t, false)
				h.Set(HeaderID, "msg_other")
				return h
			},
			wantErr: ErrNoMatchingSignature,
		},
		{
			name:    "TimestampTooOld",
			header:  func(t *testing.T) http.Header { return signed(t, false) },
			now:     vectorTime.Add(TimestampTolerance + time.Second),
			wantErr: ErrBadTimestamp,
		},
		{
			name:    "TimestampTooNew",
			header:  func(t *testing.T) http.Header { return signed(t, false) },
			now:     vectorTime.Add(-TimestampTolerance - time.Second),
			wantErr: ErrBadTimestamp,
		},
		{
			name:   "TimestampAtTolerance",
			header: func(t *testing.T) http.Header { return signed(t, false) },
			now:    vectorTime.Add(TimestampTolerance),
			want:   Result{Standard: true},
		},
		{
			// A replay: the compatibility signature signs no time and still
			// matches, but the stale timestamp makes the whole check fail.
			name:    "ReplayWithCompat",
			header:  func(t *testing.T) http.Header { return signed(t, true) },
			now:     vectorTime.Add(time.Hour),
			want:    Result{Compat: true},
			wantErr: ErrBadTimestamp,
		},
		{
			name: "TimestampNotANumber",
			header: func(t *testing.T) http.Header {
				h := signed(t, false)
				h.Set(HeaderTimestamp, "2021-02-26T15:02:10Z")
				return h
			},
			wantErr: ErrBadTimestamp,
		},
		{
			name:    "NoHeaders",
			header:  func(t *testing.T) http.Header { return http.Header{} },
			wantErr: ErrMissingHeaders,
		},
		{
			name: "IncompleteStandard",
			header: func(t *testing.T) http.Header {
				h := signed(t, false)
				h.Del(HeaderID)
				return h
			},
			wantErr: ErrMissingHeaders,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := body
			if tt.body != nil {
				b = tt.body
			}
			secrets := []string{vectorSecret}
			if tt.secrets != nil {
				secrets = tt.secrets
			}
			now := vectorTime
			if !tt.now.IsZero() {
				now = tt.now
			}
			got, err := Verify(secrets, tt.header(t), b, now)
			if tt.wantErr == nil && err != nil {
				t.Fatalf("Verify = %v, want nil", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("Verify result = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// FuzzVerify checks that Verify never panics on any headers and body, and
// accepts a webhook only when it carries the signature that the secret
// makes for exactly that id, timestamp and body (Standard Webhooks), or for
// exactly that body (compatibility). `go test` runs the seeds; `go test
// -fuzz FuzzVerify ./shared/webhook` looks for more.
func FuzzVerify(f *testing.F) {
	now := time.Unix(vectorTimestamp, 0)
	good, err := Signer{Secrets: []string{vectorSecret}, Compat: true}.Headers(vectorMsgID, "r", now, []byte(vectorBody))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(vectorMsgID, strconv.FormatInt(vectorTimestamp, 10), good.Get(HeaderSignature), good.Get(HeaderCompatSignature), []byte(vectorBody))
	f.Add(vectorMsgID, "1614265330 ", "v1,"+strings.Repeat("A", 44), "v1=", []byte(vectorBody))
	f.Add("", "-1", "v1, v1,, v2,x", "v1=zz", []byte{})
	f.Fuzz(func(t *testing.T, id, ts, sig, compat string, body []byte) {
		h := http.Header{}
		for k, v := range map[string]string{HeaderID: id, HeaderTimestamp: ts, HeaderSignature: sig, HeaderCompatSignature: compat} {
			if v != "" {
				h.Set(k, v)
			}
		}
		res, err := Verify([]string{vectorSecret}, h, body, now)
		if err != nil {
			return
		}
		if res.Standard {
			unix, perr := strconv.ParseInt(ts, 10, 64)
			want, werr := Signer{Secrets: []string{vectorSecret}}.Headers(id, "r", time.Unix(unix, 0), body)
			if perr != nil || werr != nil || !strings.Contains(sig, want.Get(HeaderSignature)) {
				t.Fatalf("verified id %q ts %q sig %q body %q without the secret's signature", id, ts, sig, body)
			}
		}
		if res.Compat {
			want, _ := Signer{Secrets: []string{vectorSecret}, Compat: true}.Headers("x", "r", now, body)
			if !strings.Contains(compat, strings.TrimPrefix(want.Get(HeaderCompatSignature), "v1=")) {
				t.Fatalf("verified compat %q body %q without the secret's signature", compat, body)
			}
		}
	})
}
