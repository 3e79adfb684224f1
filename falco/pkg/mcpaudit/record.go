package mcpaudit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Reason says why a line was skipped.
type Reason int

// The kinds of bad line. Each is skipped, counted and logged; none ends the stream.
const (
	// ReasonNotJSON: the line is not one JSON value (also: empty, or text after it).
	ReasonNotJSON Reason = iota
	// ReasonNotObject: the line is JSON but not an object.
	ReasonNotObject
	// ReasonMissingField: a required key is absent.
	ReasonMissingField
	// ReasonWrongType: a declared key holds another type (a string for uint64, a
	// negative number, a fraction or exponent, an integer past 2^64-1, null, ...).
	ReasonWrongType
	// ReasonTooLong: the line is longer than maxLineBytes.
	ReasonTooLong
	// ReasonTorn: the line has no newline and never will (end of a file that is done).
	ReasonTorn
	numReasons
)

var reasonNames = [numReasons]string{"not_json", "not_object", "missing_field", "wrong_type", "too_long", "torn"}

// String is the reason's name in counters and logs.
func (r Reason) String() string {
	if r >= 0 && r < numReasons {
		return reasonNames[r]
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// LineError is why a line cannot be an event.
type LineError struct {
	Reason Reason
	Detail string
}

func (e *LineError) Error() string {
	return e.Reason.String() + ": " + e.Detail
}

// value is one key of a decoded line; only the member of its field's kind is used.
type value struct {
	present bool
	str     string
	u64     uint64
	boolean bool
}

// Record is one decoded audit line: a value per entry of Fields, in its order.
type Record struct {
	values []value
}

// Timestamp is the line's timestamp key: when the event happened, unix nanoseconds.
func (r *Record) Timestamp() uint64 {
	return r.values[timestampIndex].u64
}

// DecodeLine decodes and checks one audit line (without its newline). Keys the table
// does not declare are ignored, so a newer gateway's lines still load; integers are
// parsed from their digits, never through float64, so unix-ns timestamps stay exact.
//
// The error, when not nil, is a *LineError.
func DecodeLine(line []byte) (*Record, error) {
	// One pass: Unmarshal checks the whole line before it decodes. A valid value that is
	// not an object is an UnmarshalTypeError, or (null) leaves the map nil.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(line, &raw); err != nil {
		var notObject *json.UnmarshalTypeError
		if errors.As(err, &notObject) {
			return nil, &LineError{ReasonNotObject, "a JSON value that is not an object"}
		}
		return nil, &LineError{ReasonNotJSON, err.Error()}
	}
	if raw == nil {
		return nil, &LineError{ReasonNotObject, "a JSON value that is not an object"}
	}
	rec := &Record{values: make([]value, len(Fields))}
	for i, f := range Fields {
		v, ok := raw[f.Name]
		if !ok {
			if f.Required {
				return nil, &LineError{ReasonMissingField, fmt.Sprintf("required key %q is absent", f.Name)}
			}
			continue
		}
		if err := decodeValue(f, v, &rec.values[i]); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

// decodeValue decodes one JSON value (a valid one: the whole line was checked) of the
// field f into out.
func decodeValue(f FieldSpec, v json.RawMessage, out *value) error {
	wrong := func(want string) error {
		shown := string(v)
		if len(shown) > 40 {
			shown = shown[:40] + "..."
		}
		return &LineError{ReasonWrongType, fmt.Sprintf("key %q must be %s, got %s", f.Name, want, shown)}
	}
	switch f.Kind {
	case KindString:
		if len(v) < 2 || v[0] != '"' {
			return wrong("a string")
		}
		// Most values have no escape: their bytes between the quotes are the string.
		if inner := v[1 : len(v)-1]; bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
			out.str = string(inner)
		} else if err := json.Unmarshal(v, &out.str); err != nil {
			return wrong("a string")
		}
	case KindUint64:
		// Digits only: a sign, a fraction or an exponent is not a uint64 even when its
		// value is whole (1.0, 1e3), and ParseUint refuses values past 2^64-1.
		for _, c := range v {
			if c < '0' || c > '9' {
				return wrong("a non-negative integer")
			}
		}
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return wrong("an integer below 2^64")
		}
		out.u64 = n
	case KindBool:
		switch string(v) {
		case "true":
			out.boolean = true
		case "false":
			out.boolean = false
		default:
			return wrong("true or false")
		}
	default:
		return &LineError{ReasonWrongType, fmt.Sprintf("key %q has no kind in the field table", f.Name)}
	}
	out.present = true
	return nil
}
