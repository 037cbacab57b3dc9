package lambdahttp_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-lambda-go/events"

	"github.com/openasync/asyncrequest/shared/lambdahttp"
)

type ctxKey struct{}

// seen is what the echo handler saw of a request.
type seen struct {
	Method        string
	Host          string
	Path          string
	EscapedPath   string
	RawQuery      string
	Query         url.Values
	PathValues    map[string]string
	Header        map[string][]string
	Cookies       []string
	Body          []byte
	ContentLength int64
	RemoteAddr    string
	Proto         string
	RequestURI    string
	ContextValue  string
}

// echoMux routes like the real handlers do and answers with what it saw.
func echoMux() http.Handler {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		s := seen{
			Method:        r.Method,
			Host:          r.Host,
			Path:          r.URL.Path,
			EscapedPath:   r.URL.EscapedPath(),
			RawQuery:      r.URL.RawQuery,
			Query:         r.URL.Query(),
			PathValues:    map[string]string{},
			Header:        r.Header,
			Body:          body,
			ContentLength: r.ContentLength,
			RemoteAddr:    r.RemoteAddr,
			Proto:         r.Proto,
			RequestURI:    r.RequestURI,
		}
		for _, name := range []string{"model_id", "chain_id", "env", "deployment_id", "request_id"} {
			if v := r.PathValue(name); v != "" {
				s.PathValues[name] = v
			}
		}
		for _, c := range r.Cookies() {
			s.Cookies = append(s.Cookies, c.Name+"="+c.Value)
		}
		if v, ok := r.Context().Value(ctxKey{}).(string); ok {
			s.ContextValue = v
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(s); err != nil {
			panic(err)
		}
	})
	mux := http.NewServeMux()
	mux.Handle("POST /production/async_predict", echo)
	mux.Handle("POST /chains/{chain_id}/environments/{env}/async_run_remote", echo)
	mux.Handle("GET /deployment/{deployment_id}/async_queue_status", echo)
	mux.Handle("GET /models/{model_id}/async_request/{request_id}", echo)
	mux.Handle("DELETE /async_request/{request_id}", echo)
	return mux
}

func loadEvent(t *testing.T, name string) events.APIGatewayV2HTTPRequest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var event events.APIGatewayV2HTTPRequest
	if err := json.Unmarshal(b, &event); err != nil {
		t.Fatalf("decode %s: %v", name, err)
	}
	return event
}

func TestHandlerRequest(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name  string
		event string
		// want holds the expected request; only the headers it names are compared.
		want seen
	}{
		{
			name:  "PostJSONBodyWithModelHost",
			event: "post-json.json",
			want: seen{
				Method:      "POST",
				Host:        "model-abc123.example.com",
				Path:        "/production/async_predict",
				EscapedPath: "/production/async_predict",
				Query:       url.Values{},
				PathValues:  map[string]string{},
				Header: map[string][]string{
					"Accept":          {"application/json,text/plain"},
					"Authorization":   {"Api-Key ak_01HF3Q.s3cr3t"},
					"Content-Type":    {"application/json"},
					"Idempotency-Key": {"order-7731"},
					"X-Forwarded-For": {"203.0.113.24"},
				},
				Body:          []byte(`{"model_input":{"prompt":"hello"},"webhook_endpoint":"https://hooks.example.org/async","priority":1}`),
				ContentLength: 100,
				RemoteAddr:    "203.0.113.24:0",
				Proto:         "HTTP/1.1",
				RequestURI:    "/production/async_predict",
				ContextValue:  "invocation",
			},
		},
		{
			name:  "PostBase64BodyWithChainPrefix",
			event: "post-base64.json",
			want: seen{
				Method:      "POST",
				Host:        "r3pmxmplak.execute-api.us-east-1.amazonaws.com",
				Path:        "/chains/chn789/environments/staging/async_run_remote",
				EscapedPath: "/chains/chn789/environments/staging/async_run_remote",
				Query:       url.Values{},
				PathValues:  map[string]string{"chain_id": "chn789", "env": "staging"},
				Header: map[string][]string{
					"Authorization": {"Bearer ak_01HF3Q.s3cr3t"},
					"Content-Type":  {"application/octet-stream"},
				},
				Body:          []byte(`{"model_input":{"text":"héllo wörld ✓"}}`),
				ContentLength: 44,
				RemoteAddr:    "198.51.100.7:0",
				Proto:         "HTTP/1.1",
				RequestURI:    "/chains/chn789/environments/staging/async_run_remote",
				ContextValue:  "invocation",
			},
		},
		{
			name:  "GetWithQueryString",
			event: "get-query.json",
			want: seen{
				Method:      "GET",
				Host:        "r3pmxmplak.execute-api.us-east-1.amazonaws.com",
				Path:        "/deployment/def456/async_queue_status",
				EscapedPath: "/deployment/def456/async_queue_status",
				RawQuery:    "verbose=1&tag=a&tag=b&q=a%26b",
				Query:       url.Values{"verbose": {"1"}, "tag": {"a", "b"}, "q": {"a&b"}},
				PathValues:  map[string]string{"deployment_id": "def456"},
				Header: map[string][]string{
					"Accept":     {"application/json"},
					"User-Agent": {"Go-http-client/1.1"},
				},
				Body:         []byte{},
				RemoteAddr:   "192.0.2.10:0",
				Proto:        "HTTP/1.1",
				RequestURI:   "/deployment/def456/async_queue_status?verbose=1&tag=a&tag=b&q=a%26b",
				ContextValue: "invocation",
			},
		},
		{
			name:  "PathPrefixHostFromDomainName",
			event: "get-path-prefix-no-host.json",
			want: seen{
				Method:      "GET",
				Host:        "r3pmxmplak.execute-api.us-east-1.amazonaws.com",
				Path:        "/models/abc/async_request/0190f5b0c2a87d3e9b1f4c6a2d8e0f11",
				EscapedPath: "/models/abc/async_request/0190f5b0c2a87d3e9b1f4c6a2d8e0f11",
				Query:       url.Values{},
				PathValues:  map[string]string{"model_id": "abc", "request_id": "0190f5b0c2a87d3e9b1f4c6a2d8e0f11"},
				Header: map[string][]string{
					"Authorization": {"Api-Key ak_01HF3Q.s3cr3t"},
				},
				Body:         []byte{},
				RemoteAddr:   "192.0.2.11:0",
				Proto:        "HTTP/1.1",
				RequestURI:   "/models/abc/async_request/0190f5b0c2a87d3e9b1f4c6a2d8e0f11",
				ContextValue: "invocation",
			},
		},
		{
			name:  "DeleteWithCookiesAndChainHost",
			event: "delete-cookies.json",
			want: seen{
				Method:      "DELETE",
				Host:        "chain-xyz789.example.com",
				Path:        "/async_request/0190f5b0c2a87d3e9b1f4c6a2d8e0f11",
				EscapedPath: "/async_request/0190f5b0c2a87d3e9b1f4c6a2d8e0f11",
				Query:       url.Values{},
				PathValues:  map[string]string{"request_id": "0190f5b0c2a87d3e9b1f4c6a2d8e0f11"},
				Header: map[string][]string{
					"Cookie":          {"session=9f8e7d6c; theme=dark"},
					"X-Forwarded-For": {"2001:db8::1"},
				},
				Cookies:      []string{"session=9f8e7d6c", "theme=dark"},
				Body:         []byte{},
				RemoteAddr:   "[2001:db8::1]:0",
				Proto:        "HTTP/1.1",
				RequestURI:   "/async_request/0190f5b0c2a87d3e9b1f4c6a2d8e0f11",
				ContextValue: "invocation",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			ctx := context.WithValue(t.Context(), ctxKey{}, "invocation")
			resp, err := lambdahttp.Handler(echoMux(), nil)(ctx, loadEvent(t, tt.event))
			if err != nil {
				t.Fatalf("Handler: %v", err)
			}
			if resp.StatusCode != http.StatusOK || resp.IsBase64Encoded {
				t.Fatalf("status %d, base64 %t, body %s", resp.StatusCode, resp.IsBase64Encoded, resp.Body)
			}
			var got seen
			if err := json.Unmarshal([]byte(resp.Body), &got); err != nil {
				t.Fatalf("decode echo %q: %v", resp.Body, err)
			}
			if _, ok := got.Header["Host"]; ok {
				t.Errorf("Host left in r.Header: %q", got.Header["Host"])
			}
			header := make(map[string][]string, len(tt.want.Header))
			for k := range tt.want.Header {
				header[k] = got.Header[k]
			}
			got.Header = header
			if got.Body == nil {
				got.Body = []byte{}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("handler saw\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestHandlerResponse(t *testing.T) {
	t.Parallel()

	png := []byte{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0x00, 0xff, 0xfe}
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    events.APIGatewayV2HTTPResponse
	}{
		{
			name: "BinaryBodyAndSetCookie",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.SetCookie(w, &http.Cookie{Name: "session", Value: "abc", Path: "/", HttpOnly: true, Secure: true})
				http.SetCookie(w, &http.Cookie{Name: "theme", Value: "dark"})
				w.Header().Add("Vary", "Accept")
				w.Header().Add("Vary", "Origin")
				w.Header().Set("Content-Type", "image/png")
				w.WriteHeader(http.StatusCreated)
				w.Write(png)
			},
			want: events.APIGatewayV2HTTPResponse{
				StatusCode:      http.StatusCreated,
				Headers:         map[string]string{"Content-Type": "image/png", "Vary": "Accept, Origin"},
				Body:            base64.StdEncoding.EncodeToString(png),
				IsBase64Encoded: true,
				Cookies:         []string{"session=abc; Path=/; HttpOnly; Secure", "theme=dark"},
			},
		},
		{
			name: "JSONWithImplicitOK",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11"}`)
			},
			want: events.APIGatewayV2HTTPResponse{
				StatusCode: http.StatusOK,
				Headers:    map[string]string{"Content-Type": "application/json"},
				Body:       `{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11"}`,
			},
		},
		{
			name: "ContentTypeSniffed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "héllo")
			},
			want: events.APIGatewayV2HTTPResponse{
				StatusCode: http.StatusOK,
				Headers:    map[string]string{"Content-Type": "text/plain; charset=utf-8"},
				Body:       "héllo",
			},
		},
		{
			name: "HeadersAfterWriteHeaderIgnored",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "5")
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Header().Set("X-Late", "1")
				w.WriteHeader(http.StatusOK)
			},
			want: events.APIGatewayV2HTTPResponse{
				StatusCode: http.StatusServiceUnavailable,
				Headers:    map[string]string{"Retry-After": "5"},
			},
		},
		{
			name:    "NothingWritten",
			handler: func(w http.ResponseWriter, r *http.Request) {},
			want:    events.APIGatewayV2HTTPResponse{StatusCode: http.StatusOK, Headers: map[string]string{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			got, err := lambdahttp.Handler(tt.handler, nil)(t.Context(), loadEvent(t, "get-query.json"))
			if err != nil {
				t.Fatalf("Handler: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("response\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestHandlerEscapedPath(t *testing.T) {
	t.Parallel()

	event := loadEvent(t, "post-json.json")
	event.RawPath = "/environments/blue%2Fgreen/async_predict"
	var env, path string
	mux := http.NewServeMux()
	mux.HandleFunc("POST /environments/{env}/async_predict", func(w http.ResponseWriter, r *http.Request) {
		env, path = r.PathValue("env"), r.URL.Path
	})
	resp, err := lambdahttp.Handler(mux, nil)(t.Context(), event)
	if err != nil {
		t.Fatalf("Handler: %v", err)
	}
	if resp.StatusCode != http.StatusOK || env != "blue/green" || path != "/environments/blue/green/async_predict" {
		t.Errorf("status %d, env %q, path %q; want 200, %q, %q", resp.StatusCode, env, path, "blue/green", "/environments/blue/green/async_predict")
	}
}

func TestHandlerBadEvent(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		modify func(*events.APIGatewayV2HTTPRequest)
		want   string
	}{
		{
			name: "InvalidBase64",
			modify: func(e *events.APIGatewayV2HTTPRequest) {
				e.Body, e.IsBase64Encoded = "not base64!", true
			},
			want: "decode base64 body",
		},
		{
			name:   "RelativePath",
			modify: func(e *events.APIGatewayV2HTTPRequest) { e.RawPath = "production/async_predict" },
			want:   "parse rawPath",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			event := loadEvent(t, "post-json.json")
			tt.modify(&event)
			called := false
			h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called = true })
			_, err := lambdahttp.Handler(h, nil)(t.Context(), event)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
			if called {
				t.Error("handler called for a bad event")
			}
		})
	}
}

func TestTestdataIsRecordedShape(t *testing.T) {
	t.Parallel()

	// Every recorded event must decode without losing fields, so the files keep
	// the exact shape API Gateway sends.
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("glob testdata: %v (%d files)", err, len(files))
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".json"), func(t *testing.T) {
			t.Parallel()

			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			dec := json.NewDecoder(strings.NewReader(string(b)))
			dec.DisallowUnknownFields()
			var event events.APIGatewayV2HTTPRequest
			if err := dec.Decode(&event); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if event.Version != "2.0" || event.RequestContext.Stage != "$default" ||
				!slices.Contains([]string{"GET", "POST", "DELETE"}, event.RequestContext.HTTP.Method) {
				t.Errorf("unexpected event header fields: version %q, stage %q, method %q",
					event.Version, event.RequestContext.Stage, event.RequestContext.HTTP.Method)
			}
		})
	}
}

// TestHandlerResponseTooLarge: an answer Lambda could not return, counted as
// the JSON the runtime sends (escapes and base64 included), is replaced by
// what tooLarge writes for the same request.
func TestHandlerResponseTooLarge(t *testing.T) {
	t.Parallel()
	body := func(b []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { w.Write(b) }
	}
	tooLarge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, `{"path":"`+r.URL.Path+`"}`)
	})
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		replaced bool
	}{
		{"UnderTheLimit", body(bytes.Repeat([]byte("a"), 5<<20)), false},
		{"OverTheLimit", body(bytes.Repeat([]byte("a"), 7<<20)), true},
		{"OverOnceEscaped", body(bytes.Repeat([]byte("<"), 1200<<10)), true}, // \u003c each
		{"OverOnceBase64", body(bytes.Repeat([]byte{0xff}, 5<<20)), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp, err := lambdahttp.Handler(tt.handler, tooLarge)(t.Context(), loadEvent(t, "get-query.json"))
			if err != nil {
				t.Fatal(err)
			}
			if replaced := resp.StatusCode == http.StatusBadGateway; replaced != tt.replaced {
				t.Fatalf("replaced = %v, want %v (status %d, %d body bytes)", replaced, tt.replaced, resp.StatusCode, len(resp.Body))
			}
			if tt.replaced && (resp.Body != `{"path":"/deployment/def456/async_queue_status"}` || resp.Headers["Content-Type"] != "application/json") {
				t.Errorf("replacement = %s %v", resp.Body, resp.Headers)
			}
		})
	}
	t.Run("DefaultReplacement", func(t *testing.T) {
		t.Parallel()
		resp, err := lambdahttp.Handler(body(bytes.Repeat([]byte("a"), 7<<20)), nil)(t.Context(), loadEvent(t, "get-query.json"))
		if err != nil || resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Body, "larger than AWS Lambda can return") {
			t.Errorf("%d %q, %v", resp.StatusCode, resp.Body, err)
		}
	})
}
