// Package lambdahttp runs a standard http.Handler behind API Gateway HTTP APIs
// (payload format 2.0) and Lambda function URLs, which send the same event, so a
// route behaves the same under Lambda as under a plain net/http server.
//
// Only a function's lambda/main.go and this package import aws-lambda-go/events;
// handlers stay ordinary net/http code.
package lambdahttp

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/aws/aws-lambda-go/events"
)

// Handler returns a Lambda handler that turns each API Gateway v2 event into an
// *http.Request, serves it with h and turns what h wrote into the response event.
//
// The request carries the invocation's context; the method and remote address
// from requestContext.http; the path and query exactly as received (rawPath,
// rawQueryString), so escaped segments route as they would on a server; the
// Host from the host header, else requestContext.domainName, so Host-based
// routing such as model-{id}.example.com works; cookies joined into one Cookie
// header; and the body, base64-decoded when isBase64Encoded is set. Header
// values that API Gateway already joined with commas are kept as one value.
// RemoteAddr is "sourceIp:0", so net.SplitHostPort works as on a server.
//
// rawPath is not stripped of a stage name: deploy the API with the $default
// stage (as template.yaml does) or behind a custom domain.
//
// The response takes the status (200 if h never set one), headers with repeated
// values joined by ", " except Set-Cookie, which goes to cookies, and the body,
// as text when it is valid UTF-8 and base64-encoded otherwise. As with
// net/http, a missing Content-Type is sniffed from the body.
//
// A response Lambda could not return (over MaxResponseBytes as the event's
// JSON) is replaced by what tooLarge writes for the same request; with a nil
// tooLarge, by a 502 saying so. Without this, Lambda fails the invocation and
// API Gateway answers a bare 500.
//
// The returned error is non-nil only for an event no server would have
// accepted (a malformed path or base64 body); API Gateway answers it with 500.
func Handler(h, tooLarge http.Handler) func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error) {
	if tooLarge == nil {
		tooLarge = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "the response is larger than AWS Lambda can return", http.StatusBadGateway)
		})
	}
	return func(ctx context.Context, event events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error) {
		r, err := NewRequest(ctx, event)
		if err != nil {
			return events.APIGatewayV2HTTPResponse{}, err
		}
		w := &responseWriter{header: make(http.Header)}
		h.ServeHTTP(w, r)
		resp := w.response()
		if tooLargeForLambda(resp) {
			w = &responseWriter{header: make(http.Header)}
			tooLarge.ServeHTTP(w, r)
			resp = w.response()
		}
		return resp, nil
	}
}

// MaxResponseBytes is the most a synchronous Lambda invocation returns: the
// response event as JSON, body escaped or base64-encoded, headers and all.
const MaxResponseBytes = 6 << 20

// tooLargeForLambda reports whether resp, as the JSON the runtime sends,
// exceeds MaxResponseBytes. JSON escaping at most sextuples a byte
// (\u003c for <), so a smaller body needs no measuring.
func tooLargeForLambda(resp events.APIGatewayV2HTTPResponse) bool {
	if len(resp.Body) <= MaxResponseBytes/6 {
		return false
	}
	b, err := json.Marshal(resp)
	return err != nil || len(b) > MaxResponseBytes
}

// NewRequest builds the *http.Request that Handler serves for event, as
// described there. It is exported for tests and for callers that route events
// themselves.
func NewRequest(ctx context.Context, event events.APIGatewayV2HTTPRequest) (*http.Request, error) {
	rawPath := cmp.Or(event.RawPath, event.RequestContext.HTTP.Path, "/")
	u, err := url.ParseRequestURI(rawPath)
	if err != nil {
		return nil, fmt.Errorf("lambdahttp: parse rawPath %q: %w", rawPath, err)
	}
	u.RawQuery = event.RawQueryString

	body := []byte(event.Body)
	if event.IsBase64Encoded {
		if body, err = base64.StdEncoding.DecodeString(event.Body); err != nil {
			return nil, fmt.Errorf("lambdahttp: decode base64 body: %w", err)
		}
	}

	method := cmp.Or(event.RequestContext.HTTP.Method, http.MethodGet)
	r, err := http.NewRequestWithContext(ctx, method, "/", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("lambdahttp: new request: %w", err)
	}
	r.URL = u
	r.RequestURI = u.RequestURI()
	if proto := event.RequestContext.HTTP.Protocol; proto != "" {
		if major, minor, ok := http.ParseHTTPVersion(proto); ok {
			r.Proto, r.ProtoMajor, r.ProtoMinor = proto, major, minor
		}
	}
	for k, v := range event.Headers {
		r.Header.Set(k, v)
	}
	if len(event.Cookies) > 0 {
		r.Header.Set("Cookie", strings.Join(event.Cookies, "; "))
	}
	// As on a server, the Host lives in r.Host, not in r.Header.
	r.Host = cmp.Or(r.Header.Get("Host"), event.RequestContext.DomainName)
	r.Header.Del("Host")
	if ip := event.RequestContext.HTTP.SourceIP; ip != "" {
		r.RemoteAddr = net.JoinHostPort(ip, "0")
	}
	return r, nil
}

// responseWriter collects what a handler writes. Like net/http, it snapshots
// the headers when the status is written and ignores later changes.
type responseWriter struct {
	header  http.Header
	written http.Header
	status  int
	body    bytes.Buffer
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(status int) {
	if w.status != 0 || status < 200 { // informational answers are not forwarded
		return
	}
	w.status = status
	w.written = w.header.Clone()
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		if w.header.Get("Content-Type") == "" && w.header.Get("Transfer-Encoding") == "" {
			w.header.Set("Content-Type", http.DetectContentType(p))
		}
		w.WriteHeader(http.StatusOK)
	}
	return w.body.Write(p)
}

func (w *responseWriter) response() events.APIGatewayV2HTTPResponse {
	w.WriteHeader(http.StatusOK) // no-op unless the handler wrote nothing
	resp := events.APIGatewayV2HTTPResponse{StatusCode: w.status, Headers: make(map[string]string, len(w.written))}
	for k, vs := range w.written {
		if http.CanonicalHeaderKey(k) == "Set-Cookie" {
			resp.Cookies = append(resp.Cookies, vs...)
			continue
		}
		resp.Headers[k] = strings.Join(vs, ", ")
	}
	if b := w.body.Bytes(); utf8.Valid(b) {
		resp.Body = string(b)
	} else {
		resp.Body, resp.IsBase64Encoded = base64.StdEncoding.EncodeToString(b), true
	}
	return resp
}
