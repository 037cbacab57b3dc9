// Package requestid generates and parses request ids.
//
// A request id is 128 bits laid out like a UUIDv7 (48 bits of Unix
// milliseconds, then random bits), written as 32 lowercase hex characters
// without dashes. Ids sort by creation time, are never all zeros, and are
// therefore also valid W3C trace ids: the request id is the trace id of the
// request's whole life.
package requestid

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// ID is a request id. The zero ID is never generated and never valid.
type ID [16]byte

// ErrInvalid is returned by Parse for anything but 32 lowercase hex
// characters encoding a non-zero id.
var ErrInvalid = errors.New("request id must be 32 lowercase hex characters")

var (
	mu     sync.Mutex
	lastMS int64
	seq    uint16
)

// New returns a new id for the current time. Ids made by one process are
// strictly increasing, even within a millisecond: the 12 bits after the
// version hold a counter seeded randomly each millisecond (and a burst of
// more than that borrows the next millisecond).
func New() ID {
	ms := time.Now().UnixMilli()
	mu.Lock()
	if ms <= lastMS {
		ms = lastMS
		seq++
		if seq > 0x0fff {
			ms++
			seq = 0
		}
	} else {
		var b [2]byte
		random(b[:])
		seq = binary.BigEndian.Uint16(b[:]) & 0x07ff // leave headroom for increments
	}
	lastMS = ms
	s := seq
	mu.Unlock()
	return build(ms, s)
}

// NewAt returns an id for time t with random bits; unlike New it keeps no
// order among ids of the same millisecond.
func NewAt(t time.Time) ID {
	var b [2]byte
	random(b[:])
	return build(t.UnixMilli(), binary.BigEndian.Uint16(b[:])&0x0fff)
}

// build lays out an id: 48 bits of Unix milliseconds, the version, 12 bits
// of seq, the variant, and random bits.
func build(ms int64, seq uint16) ID {
	var id ID
	random(id[8:])
	binary.BigEndian.PutUint16(id[0:2], uint16(ms>>32))
	binary.BigEndian.PutUint32(id[2:6], uint32(ms))
	binary.BigEndian.PutUint16(id[6:8], 0x7000|seq) // version 7
	id[8] = id[8]&0x3f | 0x80                       // RFC 9562 variant
	return id
}

func random(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("requestid: read random: %v", err)) // crypto/rand never fails on supported platforms
	}
}

// Parse parses the 32-hex-character form.
func Parse(s string) (ID, error) {
	var id ID
	if len(s) != 32 {
		return id, ErrInvalid
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return id, ErrInvalid
		}
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, ErrInvalid
	}
	if id.IsZero() {
		return id, ErrInvalid
	}
	return id, nil
}

// String returns the 32 lowercase hex characters.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is all zeros.
func (id ID) IsZero() bool { return id == ID{} }

// Time returns the millisecond timestamp embedded in id.
func (id ID) Time() time.Time {
	ms := int64(binary.BigEndian.Uint16(id[0:2]))<<32 | int64(binary.BigEndian.Uint32(id[2:6]))
	return time.UnixMilli(ms).UTC()
}

// MarshalText encodes id as 32 hex characters, so it appears that way in JSON.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses the 32-hex-character form.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// UUIDValue lets pgx store an ID in a uuid column.
func (id ID) UUIDValue() (pgtype.UUID, error) { return pgtype.UUID{Bytes: id, Valid: true}, nil }

// ScanUUID lets pgx read an ID from a uuid column.
func (id *ID) ScanUUID(v pgtype.UUID) error {
	if !v.Valid {
		return errors.New("scan request id: NULL")
	}
	*id = v.Bytes
	return nil
}
