package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// EventType is the payload's "type".
const EventType = "async_request_completed"

// TimeFormat is the layout of the payload's "time": RFC 3339 in UTC with
// microseconds, as everywhere in the API.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// Payload is the body of a webhook (SPEC §6). Models carry model_id, chains
// chain_id. Time is when this delivery attempt was sent, so it differs on
// every retry and redelivery; everything else is the same on each of them.
type Payload struct {
	RequestID    string `json:"request_id"`
	ModelID      string `json:"model_id,omitempty"`
	ChainID      string `json:"chain_id,omitempty"`
	DeploymentID string `json:"deployment_id"`
	Type         string `json:"type"`
	Time         string `json:"time"`
	// Status is the request's final state: SUCCEEDED, FAILED or EXPIRED.
	Status string `json:"status"`
	// Data is the model's output as stored; null when there is none.
	Data   json.RawMessage `json:"data"`
	Errors []Error         `json:"errors"`
}

// Error is one entry of a payload's errors, one per failed attempt.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// SentAt formats t as a payload's Time.
func SentAt(t time.Time) string { return t.UTC().Format(TimeFormat) }

// Encode returns the exact bytes of the webhook body: Type defaults to
// EventType, nil Errors is an empty array, Data that is not JSON is sent as a
// string, and nothing is HTML-escaped. Sign these bytes, not a re-encoding.
func (p Payload) Encode() ([]byte, error) {
	if p.Type == "" {
		p.Type = EventType
	}
	if p.Errors == nil {
		p.Errors = []Error{}
	}
	if len(p.Data) > 0 && !json.Valid(p.Data) {
		s, err := json.Marshal(string(p.Data))
		if err != nil {
			return nil, fmt.Errorf("encode webhook payload: %w", err)
		}
		p.Data = s
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return nil, fmt.Errorf("encode webhook payload: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
