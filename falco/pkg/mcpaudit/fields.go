package mcpaudit

import (
	"fmt"

	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk"
)

// FieldPrefix is prepended to every audit key to make its Falco field name.
const FieldPrefix = "mcp."

// Kind is the type of an audit key's value, which is also its Falco field type.
type Kind int

// The kinds an audit key can have (gateway/audit/fields.py: string, integer, boolean).
const (
	// KindString is a JSON string, extracted as a Falco string.
	KindString Kind = iota + 1
	// KindUint64 is a non-negative JSON integer, extracted as a Falco uint64.
	KindUint64
	// KindBool is a JSON boolean, extracted as a Falco bool.
	KindBool
)

// FalcoType is the field type name Falco knows the kind by.
func (k Kind) FalcoType() string {
	switch k {
	case KindString:
		return "string"
	case KindUint64:
		return "uint64"
	case KindBool:
		return "bool"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// sdkType is the field type code of the plugin API for the kind.
func (k Kind) sdkType() uint32 {
	switch k {
	case KindUint64:
		return sdk.FieldTypeUint64
	case KindBool:
		return sdk.FieldTypeBool
	}
	return sdk.FieldTypeCharBuf
}

// FieldSpec declares one key of an audit line. The table (Fields, in fields_gen.go) is
// generated from gateway/audit/fields.py, the one declaration of the line.
type FieldSpec struct {
	// Name is the JSON key; Falco sees it as mcp.<Name>.
	Name string
	// Kind is the value's type.
	Kind Kind
	// Required keys are present in every line; a line without one is skipped.
	Required bool
	// Enum lists the values the gateway writes, when closed. Documentation only: the
	// plugin does not reject other values, so a gateway that adds one is not cut off.
	Enum []string
	// Desc says what the value means, with its unit.
	Desc string
}

// FalcoName is the field's name in Falco rules: mcp.<Name>.
func (f FieldSpec) FalcoName() string {
	return FieldPrefix + f.Name
}

// fieldIndex maps an audit key to its position in Fields.
var fieldIndex = func() map[string]int {
	m := make(map[string]int, len(Fields))
	for i, f := range Fields {
		m[f.Name] = i
	}
	return m
}()

// timestampIndex is the position of the key that carries the event time (unix ns).
var timestampIndex = func() int {
	i, ok := fieldIndex["timestamp"]
	if !ok || Fields[i].Kind != KindUint64 || !Fields[i].Required {
		panic("mcpaudit: the field table lacks a required uint64 'timestamp'")
	}
	return i
}()

// Fields returns the fields the plugin extracts, one per entry of the field table, in
// its order: the request's field id is the index in Fields.
func (p *Plugin) Fields() []sdk.FieldEntry {
	entries := make([]sdk.FieldEntry, len(Fields))
	for i, f := range Fields {
		entries[i] = sdk.FieldEntry{Name: f.FalcoName(), Type: f.Kind.FalcoType(), Desc: f.Desc}
	}
	return entries
}
