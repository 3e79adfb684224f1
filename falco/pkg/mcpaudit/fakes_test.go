package mcpaudit

import (
	"bytes"
	"io"
	"log"
	"testing"
	"unsafe"

	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk"
)

// Fakes of the SDK's event and extraction interfaces, in Go memory, as the official
// plugins' tests do: the plugin code under test cannot tell them from the real ones.

// fakeEvent is one event written by NextBatch or read by Extract.
type fakeEvent struct {
	num  uint64
	ts   uint64
	data bytes.Buffer
}

func (e *fakeEvent) Writer() io.Writer         { e.data.Reset(); return &e.data }
func (e *fakeEvent) SetTimestamp(value uint64) { e.ts = value }
func (e *fakeEvent) EventNum() uint64          { return e.num }
func (e *fakeEvent) Timestamp() uint64         { return e.ts }
func (e *fakeEvent) Reader() io.ReadSeeker     { return bytes.NewReader(e.data.Bytes()) }
func (e *fakeEvent) payload() string           { return e.data.String() }
func newFakeEvent(num uint64, line string) *fakeEvent {
	e := &fakeEvent{num: num}
	e.data.WriteString(line)
	return e
}

// fakeEventWriters is a batch of fakeEvents.
type fakeEventWriters struct{ evts []*fakeEvent }

func newFakeEventWriters(n int) *fakeEventWriters {
	w := &fakeEventWriters{evts: make([]*fakeEvent, n)}
	for i := range w.evts {
		w.evts[i] = &fakeEvent{}
	}
	return w
}

func (w *fakeEventWriters) Get(i int) sdk.EventWriter { return w.evts[i] }
func (w *fakeEventWriters) Len() int                  { return len(w.evts) }
func (w *fakeEventWriters) ArrayPtr() unsafe.Pointer  { return nil }
func (w *fakeEventWriters) Free()                     {}

// fakeExtractRequest records the value Extract sets, if any.
type fakeExtractRequest struct {
	id    uint64
	field string
	ftype uint32
	value any
	set   bool
}

func (r *fakeExtractRequest) FieldID() uint64                     { return r.id }
func (r *fakeExtractRequest) FieldType() uint32                   { return r.ftype }
func (r *fakeExtractRequest) Field() string                       { return r.field }
func (r *fakeExtractRequest) ArgKey() string                      { return "" }
func (r *fakeExtractRequest) ArgIndex() uint64                    { return 0 }
func (r *fakeExtractRequest) ArgPresent() bool                    { return false }
func (r *fakeExtractRequest) IsList() bool                        { return false }
func (r *fakeExtractRequest) SetValue(v any)                      { r.value, r.set = v, true }
func (r *fakeExtractRequest) SetValueOffset(start, length uint32) {}
func (r *fakeExtractRequest) SetPtr(unsafe.Pointer)               {}
func (r *fakeExtractRequest) SetOffsetPtrs(_, _ unsafe.Pointer)   {}
func (r *fakeExtractRequest) WantOffset() bool                    { return false }

// requestFor is the extraction request Falco would send for the audit key name.
func requestFor(t *testing.T, p *Plugin, name string) *fakeExtractRequest {
	t.Helper()
	for i, f := range p.Fields() {
		if f.Name == FieldPrefix+name {
			return &fakeExtractRequest{id: uint64(i), field: f.Name, ftype: Fields[i].Kind.sdkType()}
		}
	}
	t.Fatalf("no field mcp.%s", name)
	return nil
}

// testLogger collects the plugin's log lines in the test's log.
func testLogger(t *testing.T) *log.Logger {
	return log.New(testWriter{t}, "["+PluginName+"] ", log.Lmsgprefix)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// newPlugin is an initialized plugin that logs into the test's log.
func newPlugin(t *testing.T, config string) *Plugin {
	t.Helper()
	p := &Plugin{}
	if err := p.Init(config); err != nil {
		t.Fatalf("Init(%q): %v", config, err)
	}
	p.logger = testLogger(t)
	return p
}
