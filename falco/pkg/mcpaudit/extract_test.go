package mcpaudit

import (
	"encoding/json"
	"io"
	"testing"

	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk"
)

func TestFieldsAreTheTableWithFalcoTypes(t *testing.T) {
	p := &Plugin{}
	entries := p.Fields()
	if len(entries) != len(Fields) {
		t.Fatalf("%d entries for %d fields", len(entries), len(Fields))
	}
	want := map[Kind]string{KindString: "string", KindUint64: "uint64", KindBool: "bool"}
	for i, e := range entries {
		if e.Name != "mcp."+Fields[i].Name || e.Type != want[Fields[i].Kind] || e.Desc != Fields[i].Desc {
			t.Errorf("entry %d = %+v for %+v", i, e, Fields[i])
		}
	}
}

func TestExtractEveryKindAndAbsentKeys(t *testing.T) {
	p := newPlugin(t, "")
	evt := newFakeEvent(1, line(t, map[string]any{"cross_tenant": true, "exit_code": uint64(0)}))
	for _, tc := range []struct {
		name string
		want any // nil: not present
	}{
		{"timestamp", preciseTs},
		{"server_port", uint64(8080)},
		{"exit_code", uint64(0)},
		{"method", "POST /v1/execute"},
		{"tls", false},
		{"cross_tenant", true},
		{"task_id", nil},
		{"duration_ms", nil},
		{"policy_engine", nil},
	} {
		req := requestFor(t, p, tc.name)
		if err := p.Extract(req, evt); err != nil {
			t.Fatalf("mcp.%s: %v", tc.name, err)
		}
		if tc.want == nil {
			if req.set {
				t.Errorf("mcp.%s is absent from the line, yet extracted as %v", tc.name, req.value)
			}
			continue
		}
		if !req.set || req.value != tc.want {
			t.Errorf("mcp.%s = %#v (set %v), want %#v", tc.name, req.value, req.set, tc.want)
		}
	}
}

func TestExtractEveryDeclaredField(t *testing.T) {
	// A line with every key of the table set: each is extracted with its own type.
	full := map[string]any{}
	for i, f := range Fields {
		switch f.Kind {
		case KindString:
			full[f.Name] = "v-" + f.Name
		case KindUint64:
			full[f.Name] = preciseTs + uint64(i)
		case KindBool:
			full[f.Name] = true
		}
	}
	p := newPlugin(t, "")
	evt := newFakeEvent(7, line(t, full))
	for _, f := range Fields {
		req := requestFor(t, p, f.Name)
		if err := p.Extract(req, evt); err != nil {
			t.Fatal(err)
		}
		if !req.set || req.value != full[f.Name] {
			t.Errorf("mcp.%s = %#v, want %#v", f.Name, req.value, full[f.Name])
		}
	}
}

// countingEvent counts how often its payload is read.
type countingEvent struct {
	*fakeEvent
	reads int
}

func (e *countingEvent) Reader() io.ReadSeeker { e.reads++; return e.fakeEvent.Reader() }

func TestExtractDecodesALineOncePerEvent(t *testing.T) {
	p := newPlugin(t, "")
	first := &countingEvent{fakeEvent: newFakeEvent(1, line(t, nil))}
	for _, f := range Fields {
		if err := p.Extract(requestFor(t, p, f.Name), first); err != nil {
			t.Fatal(err)
		}
	}
	if first.reads != 1 {
		t.Errorf("%d fields of one event read its payload %d times, want once", len(Fields), first.reads)
	}
	second := &countingEvent{fakeEvent: newFakeEvent(2, line(t, map[string]any{"method": "ExecuteCommand"}))}
	req := requestFor(t, p, "method")
	if err := p.Extract(req, second); err != nil {
		t.Fatal(err)
	}
	if second.reads != 1 || req.value != "ExecuteCommand" {
		t.Errorf("the next event must be decoded afresh: reads %d, method %v", second.reads, req.value)
	}
}

func TestExtractFromAnUndecodablePayloadIsAnError(t *testing.T) {
	p := newPlugin(t, "")
	if err := p.Extract(requestFor(t, p, "method"), newFakeEvent(1, `{"not": "an audit line"}`)); err == nil {
		t.Error("an event this source did not write must fail extraction")
	}
	if err := p.Extract(&fakeExtractRequest{id: uint64(len(Fields)), ftype: sdk.FieldTypeCharBuf}, newFakeEvent(2, line(t, nil))); err == nil {
		t.Error("an unknown field id must fail extraction")
	}
}

func TestStringIsTheRawLine(t *testing.T) {
	p := newPlugin(t, "")
	raw := line(t, nil)
	got, err := p.String(newFakeEvent(1, raw))
	if err != nil || got != raw {
		t.Errorf("String = %q, %v", got, err)
	}
	if !json.Valid([]byte(got)) {
		t.Error("not JSON")
	}
}
