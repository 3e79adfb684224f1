package mcpaudit

import (
	"bytes"
	"fmt"

	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk"
)

// Extract sets the value of one mcp.<key> field of an event, or no value (the field is
// not present) when the line lacks the key. The event's payload is its raw line; it is
// decoded once per event number, however many fields are extracted from it.
func (p *Plugin) Extract(req sdk.ExtractRequest, evt sdk.EventReader) error {
	id := req.FieldID()
	if id >= uint64(len(Fields)) {
		return fmt.Errorf("mcpaudit: no field with id %d (%s)", id, req.Field())
	}
	rec, err := p.record(evt)
	if err != nil {
		return err
	}
	v := rec.values[id]
	if !v.present {
		return nil
	}
	switch Fields[id].Kind {
	case KindString:
		req.SetValue(v.str)
	case KindUint64:
		req.SetValue(v.u64)
	case KindBool:
		req.SetValue(v.boolean)
	}
	return nil
}

// String renders an event as its raw line (Falco's evt.plugininfo).
func (p *Plugin) String(evt sdk.EventReader) (string, error) {
	if err := p.readPayload(evt); err != nil {
		return "", err
	}
	return string(p.payload), nil
}

// record is the decoded line of evt, from the cache when evt is the last event seen.
// A payload that does not decode (an event this source did not write: it checks every
// line before emitting it) is an error.
func (p *Plugin) record(evt sdk.EventReader) (*Record, error) {
	num := evt.EventNum()
	if p.cached != nil && p.cachedEvtNum == num {
		return p.cached, nil
	}
	if err := p.readPayload(evt); err != nil {
		return nil, err
	}
	rec, err := DecodeLine(p.payload)
	if err != nil {
		return nil, fmt.Errorf("mcpaudit: event %d: %w", num, err)
	}
	p.cached, p.cachedEvtNum = rec, num
	return rec, nil
}

// readPayload copies evt's payload into p.payload (a buffer reused across events).
func (p *Plugin) readPayload(evt sdk.EventReader) error {
	buf := bytes.NewBuffer(p.payload[:0])
	if _, err := buf.ReadFrom(evt.Reader()); err != nil {
		return fmt.Errorf("mcpaudit: event %d: reading the payload: %w", evt.EventNum(), err)
	}
	p.payload = buf.Bytes()
	return nil
}
