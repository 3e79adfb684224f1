package mcpaudit

import (
	"encoding/json"
	"testing"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		text string
		want Config
	}{
		{"", DefaultConfig()},
		{"  ", DefaultConfig()},
		{"{}", DefaultConfig()},
		{`{"follow": true}`, Config{Follow: true, MaxLineBytes: 1 << 20, PollIntervalMs: 200}},
		{`{"maxLineBytes": 4096, "pollIntervalMs": 50}`, Config{MaxLineBytes: 4096, PollIntervalMs: 50}},
	} {
		got, err := ParseConfig(tc.text)
		if err != nil || got != tc.want {
			t.Errorf("ParseConfig(%q) = %+v, %v; want %+v", tc.text, got, err, tc.want)
		}
	}
}

func TestInvalidConfigIsAnInitError(t *testing.T) {
	for _, text := range []string{
		`{"follow": "yes"}`,
		`{"maxLineBytes": -1}`,
		`{"maxLineBytes": 10}`,
		`{"maxLineBytes": 1e9}`,
		`{"pollIntervalMs": 0}`,
		`{"pollIntervalMs": 600000}`,
		`{"folow": true}`,
		`[]`,
		`{"follow": true} {}`,
		`not json`,
	} {
		p := &Plugin{}
		if err := p.Init(text); err == nil {
			t.Errorf("Init(%s) = nil, want an error", text)
		}
	}
}

func TestTheSchemaStatesTheDefaults(t *testing.T) {
	var schema struct {
		Type                 string `json:"type"`
		AdditionalProperties bool   `json:"additionalProperties"`
		Properties           map[string]struct {
			Type    string          `json:"type"`
			Default json.RawMessage `json:"default"`
			Minimum *uint32         `json:"minimum"`
			Maximum *uint32         `json:"maximum"`
		} `json:"properties"`
	}
	if err := json.Unmarshal([]byte((&Plugin{}).InitSchema().Schema), &schema); err != nil {
		t.Fatal(err)
	}
	// The defaults the schema states decode to DefaultConfig.
	defaults := map[string]json.RawMessage{}
	for name, prop := range schema.Properties {
		defaults[name] = prop.Default
	}
	text, _ := json.Marshal(defaults)
	if got, err := ParseConfig(string(text)); err != nil || got != DefaultConfig() {
		t.Errorf("schema defaults %s give %+v, %v; want %+v", text, got, err, DefaultConfig())
	}
	bounds := map[string][2]uint32{
		"maxLineBytes":   {minMaxLineBytes, maxMaxLineBytes},
		"pollIntervalMs": {minPollIntervalMs, maxPollIntervalMs},
	}
	for name, b := range bounds {
		prop := schema.Properties[name]
		if prop.Minimum == nil || prop.Maximum == nil || *prop.Minimum != b[0] || *prop.Maximum != b[1] {
			t.Errorf("%s: schema bounds differ from the code's %v", name, b)
		}
	}
	if len(schema.Properties) != 3 || schema.AdditionalProperties || schema.Type != "object" {
		t.Errorf("schema = %+v", schema)
	}
}
