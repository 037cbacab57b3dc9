// Package httpapi is what the public API's handlers (submit and status)
// share: the route table, the JSON encode and decode helpers, the error
// format and the one mapping from errors to statuses, the middleware that
// reads the model from the Host header or the path, API-key
// authentication, per-organization rate limits, and the routers.
//
// Routes (routes.go) is the one table of the API's routes: method,
// pattern, the function that serves it, the auth it needs, its scope
// (which forms of model routing apply) and its handler's name. Each
// function's New hands NewRouter its handlers by name; Mux serves both
// functions on one listener (the dev harness, the API server) by the
// table; the tests check template.yaml and the OpenAPI document against
// it. To add a route: write the handler and add it to its function's
// Handlers under a new name, add one Route, and add its events (one per
// Route.Paths) to template.yaml.
package httpapi

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// MaxBodyBytesDefault is the largest request body the API reads: 256 KiB,
// counting the whole body, not only model_input.
const MaxBodyBytesDefault = 256 << 10

// RepeatedHeader answers a request that sends header more than once, where
// it must be sent once (Authorization, Idempotency-Key): net/http and
// proxies would each pick one, so the request is ambiguous. Nothing is
// written.
func RepeatedHeader(header string) *Error {
	return Invalid(header, header+" is sent more than once; send it once")
}

// ErrOverloaded answers a connection that the API server refuses at its
// connection cap (API_MAX_CONNS), when every connection it holds is busy.
var ErrOverloaded = &Error{Status: http.StatusServiceUnavailable, Code: ErrUnavailable.Code,
	Message: "the server has too many open connections; retry after the time in Retry-After", RetryAfter: time.Second}

// Overloaded answers every request with ErrOverloaded.
var Overloaded = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	WriteError(w, r, nil, ErrOverloaded)
})

// Encode writes v as a JSON response with status.
func Encode(w http.ResponseWriter, status int, v any) {
	// Not HTML-escaped: the answer is JSON served with nosniff, and
	// messages such as "Api-Key <key>" should read as written.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if err != nil {
		// Only a bug gets here (every response type marshals); answer in
		// the API's format without echoing the error.
		slog.Error("encode response", "error", err)
		status = http.StatusInternalServerError
		b = []byte(`{"error":"internal error","error_code":"internal_baseten_error","code":"INTERNAL_ERROR"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// Decode reads r's body, at most limit bytes (MaxBodyBytesDefault when
// zero), into v, a pointer to a struct, and returns the raw body. It
// answers with errors that WriteError maps:
//
//   - ErrBodyTooLarge past the limit;
//   - ErrMalformedJSON for an empty body, invalid JSON, trailing data, or a
//     body that is not a JSON object;
//   - ErrUnknownField for a field v has no place for, with Field its dotted
//     path (such as "inference_retry_config.max_attemps");
//   - a 400 (ErrInvalid) naming the field whose value has the wrong type;
//   - ErrContentEncoding for a compressed body (a Content-Encoding other
//     than identity), which would otherwise read as malformed JSON.
//
// JSON null leaves a field as it was, so pointer fields read null as
// absent.
func Decode(w http.ResponseWriter, r *http.Request, limit int64, v any) ([]byte, error) {
	if limit <= 0 {
		limit = MaxBodyBytesDefault
	}
	if enc := strings.TrimSpace(r.Header.Get("Content-Encoding")); enc != "" && !strings.EqualFold(enc, "identity") {
		return nil, ErrContentEncoding
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, ErrBodyTooLarge
		}
		return nil, &Error{Status: http.StatusBadRequest, Code: ErrMalformedJSON.Code, Message: "the request body could not be read"}
	}
	return body, DecodeBytes(body, v)
}

// DecodeBytes is Decode for a body already read.
func DecodeBytes(body []byte, v any) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return &Error{Status: http.StatusBadRequest, Code: ErrMalformedJSON.Code, Message: "the request body is empty; send a JSON object"}
	}
	if trimmed[0] != '{' {
		if json.Valid(trimmed) {
			return &Error{Status: http.StatusBadRequest, Code: ErrMalformedJSON.Code, Message: "the request body must be a JSON object"}
		}
		return ErrMalformedJSON
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, extra := dec.Token(); extra != io.EOF {
			return &Error{Status: http.StatusBadRequest, Code: ErrMalformedJSON.Code, Message: "the request body has data after the JSON object"}
		}
		if path := unknownFieldPath(reflect.TypeOf(v), body); path != "" {
			return &Error{Status: http.StatusBadRequest, Code: ErrUnknownField.Code, Field: path,
				Message: "unknown field " + strconv.Quote(path)}
		}
		if path := repeatedFieldPath(reflect.TypeOf(v), body); path != "" {
			return Invalid(path, path+" is given more than once")
		}
		return nil
	}
	if typeErr, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if !json.Valid(body) { // a type error reported before a syntax error further on
			return ErrMalformedJSON
		}
		field := typeErr.Field
		return Invalid(field, field+" must be "+jsonKind(typeErr.Type)+", not "+typeErr.Value)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if !json.Valid(body) {
			return ErrMalformedJSON
		}
		path := unknownFieldPath(reflect.TypeOf(v), body)
		if path == "" {
			path = strings.Trim(name, `"`)
		}
		return &Error{Status: http.StatusBadRequest, Code: ErrUnknownField.Code, Field: path,
			Message: "unknown field " + strconv.Quote(path)}
	}
	return ErrMalformedJSON
}

// jsonKind names the JSON type that a Go type decodes from.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "another type"
}

// unknownFieldPath finds, in document order, the first key of body that the
// struct type t has no field for, and returns its dotted path; "" if none.
// encoding/json names only the key, which is ambiguous for nested objects.
func unknownFieldPath(t reflect.Type, body []byte) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return ""
	}
	fields := jsonFields(t)
	for _, key := range objectKeys(body) {
		ft, known := fields[key]
		if !known {
			return key
		}
		if path := unknownFieldPath(ft, rawValue(body, key)); path != "" {
			return key + "." + path
		}
	}
	return ""
}

// repeatedFieldPath returns the path of the first key that one object of
// body gives twice, looking into the objects that t decodes (not into
// free-form values such as model_input); "" when there is none.
// encoding/json would keep the last of them without a word, and a client
// that sends two priorities should hear which field is in doubt.
func repeatedFieldPath(t reflect.Type, body []byte) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return ""
	}
	fields := jsonFields(t)
	seen := map[string]bool{}
	for _, key := range objectKeys(body) {
		if seen[key] {
			return key
		}
		seen[key] = true
		if ft, known := fields[key]; known {
			if path := repeatedFieldPath(ft, rawValue(body, key)); path != "" {
				return key + "." + path
			}
		}
	}
	return ""
}

// jsonFields maps the JSON keys of struct type t to their field types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		// Exactly: encoding/json would also take "Priority" for
		// "priority", and a key spelled otherwise than documented is a
		// mistake to report, not to guess at.
		fields[cmp.Or(name, f.Name)] = f.Type
	}
	return fields
}

// objectKeys returns the keys of the JSON object raw in document order.
func objectKeys(raw []byte) []string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return keys
		}
		key, _ := tok.(string)
		keys = append(keys, key)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return keys
		}
	}
	return keys
}

// rawValue returns the raw JSON of key in the object raw (the last one, as
// encoding/json keeps).
func rawValue(raw []byte, key string) []byte {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil
	}
	return obj[key]
}
