package mcpaudit

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// preciseTs needs all 64 bits: through float64 it would come back as ...456768.
const preciseTs uint64 = 1765058400123456789

// absent, as the value of an override, removes the key from the line.
type absentKey struct{}

var absent absentKey

// baseLine is a line with every required key, the way the gateway writes one.
func baseLine() map[string]any {
	return map[string]any{
		"schema_version": "1",
		"timestamp":      preciseTs,
		"session_id":     "conn-1",
		"client_process": "pytest/1.0",
		"server_host":    "127.0.0.1",
		"server_port":    uint64(8080),
		"tls":            false,
		"method":         "POST /v1/execute",
		"event_id":       "5b0f3f8e-1c1f-4c47-9d0c-3c1f2f0b9a10",
		"event_type":     "decision",
		"producer":       "mcp-gateway",
		"transport":      "http",
		"principal":      "dev",
		"tenant":         "default",
		"auth_scheme":    "none",
		"seq":            uint64(1),
		"prev_hash":      strings.Repeat("0", 64),
		"hash":           strings.Repeat("a", 64),
	}
}

// line is baseLine with overrides applied (absent removes a key), as JSON. A
// json.RawMessage value is written as it is.
func line(t testing.TB, overrides map[string]any) string {
	t.Helper()
	m := baseLine()
	for k, v := range overrides {
		if v == absent {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// badLines holds one line per way a line can be bad, with the reason it is skipped for.
func badLines(t testing.TB) []struct {
	name   string
	line   string
	reason Reason
} {
	return []struct {
		name   string
		line   string
		reason Reason
	}{
		{"not JSON", `{"schema_version": "1", `, ReasonNotJSON},
		{"text", `hello`, ReasonNotJSON},
		{"empty", ``, ReasonNotJSON},
		{"two values", line(t, nil) + ` {}`, ReasonNotJSON},
		{"an array", `[1, 2]`, ReasonNotObject},
		{"a string", `"x"`, ReasonNotObject},
		{"a number", `17`, ReasonNotObject},
		{"null", `null`, ReasonNotObject},
		{"missing required key", line(t, map[string]any{"session_id": absent}), ReasonMissingField},
		{"missing timestamp", line(t, map[string]any{"timestamp": absent}), ReasonMissingField},
		{"string for uint64", line(t, map[string]any{"server_port": "8080"}), ReasonWrongType},
		{"negative number", line(t, map[string]any{"exit_code": -1}), ReasonWrongType},
		{"float", line(t, map[string]any{"duration_ms": 1.5}), ReasonWrongType},
		{"whole float", line(t, map[string]any{"duration_ms": json.RawMessage(`1.0`)}), ReasonWrongType},
		{"exponent", line(t, map[string]any{"timestamp": json.RawMessage(`1.7e18`)}), ReasonWrongType},
		{"past 2^64-1", line(t, map[string]any{"seq": json.RawMessage(`18446744073709551616`)}), ReasonWrongType},
		{"number for string", line(t, map[string]any{"method": 7}), ReasonWrongType},
		{"string for bool", line(t, map[string]any{"tls": "true"}), ReasonWrongType},
		{"number for bool", line(t, map[string]any{"cross_tenant": 1}), ReasonWrongType},
		{"null", line(t, map[string]any{"task_id": nil}), ReasonWrongType},
		{"object for string", line(t, map[string]any{"command": map[string]any{"a": 1}}), ReasonWrongType},
	}
}

func TestDecodeLineReadsEveryKind(t *testing.T) {
	rec, err := DecodeLine([]byte(line(t, map[string]any{
		"exit_code":    uint64(0),
		"cross_tenant": true,
		"unknown_key":  "ignored, so a newer gateway's lines still load",
	})))
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string) value { return rec.values[fieldIndex[name]] }
	if v := get("timestamp"); !v.present || v.u64 != preciseTs || rec.Timestamp() != preciseTs {
		t.Errorf("timestamp = %+v, want exactly %d", v, preciseTs)
	}
	if v := get("method"); !v.present || v.str != "POST /v1/execute" {
		t.Errorf("method = %+v", v)
	}
	if v := get("exit_code"); !v.present || v.u64 != 0 {
		t.Errorf("exit_code 0 must be present: %+v", v)
	}
	if v := get("tls"); !v.present || v.boolean {
		t.Errorf("tls false must be present: %+v", v)
	}
	if v := get("cross_tenant"); !v.present || !v.boolean {
		t.Errorf("cross_tenant = %+v", v)
	}
	if v := get("task_id"); v.present {
		t.Errorf("task_id is absent from the line, yet %+v", v)
	}
}

func TestDecodeLineUnescapesStrings(t *testing.T) {
	for raw, want := range map[string]string{
		`"plain"`:                  "plain",
		`"a\"b\\c\u00e9\n"`:        "a\"b\\c\u00e9\n",
		`"caf\u00e9 \ud83d\ude00"`: "caf\u00e9 \U0001F600",
		"\"bad \xff byte\"":        "bad \uFFFD byte", // invalid UTF-8 becomes U+FFFD, as encoding/json does
	} {
		rec, err := DecodeLine([]byte(line(t, map[string]any{"command": json.RawMessage(raw)})))
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if got := rec.values[fieldIndex["command"]].str; got != want {
			t.Errorf("%s decodes to %q, want %q", raw, got, want)
		}
	}
}

func TestDecodeLineTakesTheLargestUint64(t *testing.T) {
	rec, err := DecodeLine([]byte(line(t, map[string]any{"request_bytes": uint64(18446744073709551615)})))
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.values[fieldIndex["request_bytes"]].u64; got != 18446744073709551615 {
		t.Errorf("request_bytes = %d", got)
	}
}

func TestDecodeLineRefusesBadLines(t *testing.T) {
	for _, bad := range badLines(t) {
		t.Run(bad.name, func(t *testing.T) {
			_, err := DecodeLine([]byte(bad.line))
			var lerr *LineError
			if !errors.As(err, &lerr) {
				t.Fatalf("DecodeLine(%s) = %v, want a *LineError", bad.line, err)
			}
			if lerr.Reason != bad.reason {
				t.Errorf("reason = %s (%s), want %s", lerr.Reason, lerr.Detail, bad.reason)
			}
		})
	}
}

func TestTheFieldTableIsSound(t *testing.T) {
	seen := map[string]bool{}
	for _, f := range Fields {
		if seen[f.Name] {
			t.Errorf("%s is declared twice", f.Name)
		}
		seen[f.Name] = true
		if f.Kind != KindString && f.Kind != KindUint64 && f.Kind != KindBool {
			t.Errorf("%s has no valid kind: %d", f.Name, f.Kind)
		}
		if f.Desc == "" {
			t.Errorf("%s has no description", f.Name)
		}
	}
}
