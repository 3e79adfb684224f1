package mcpaudit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Limits and defaults of the init config; configSchema states the same numbers.
const (
	defaultMaxLineBytes   = 1 << 20 // 1 MiB
	minMaxLineBytes       = 1 << 10
	maxMaxLineBytes       = 16 << 20
	defaultPollIntervalMs = 200
	minPollIntervalMs     = 10
	maxPollIntervalMs     = 60_000
)

// Config is the plugin's init config (Falco's init_config; JSON).
type Config struct {
	// Follow keeps reading as the gateway appends, across rotation by rename and
	// copy-truncate, instead of stopping at the end of the file.
	Follow bool `json:"follow"`
	// MaxLineBytes is the longest line accepted, bytes without the newline; a longer one
	// is skipped and counted. It is also the size of each event buffer.
	MaxLineBytes uint32 `json:"maxLineBytes"`
	// PollIntervalMs is how long a follow-mode read waits for new lines before it
	// reports a timeout to Falco, milliseconds.
	PollIntervalMs uint32 `json:"pollIntervalMs"`
}

// configSchema is the JSON Schema of Config, returned by InitSchema: Falco (and the
// SDK's loader) validate init_config with it before Init is called.
const configSchema = `{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "mcp_audit init config",
  "type": "object",
  "properties": {
    "follow": {
      "type": "boolean",
      "default": false,
      "description": "Keep reading as lines are appended, across rotation by rename and copy-truncate; false stops at the end of the file."
    },
    "maxLineBytes": {
      "type": "integer",
      "minimum": 1024,
      "maximum": 16777216,
      "default": 1048576,
      "description": "Longest line accepted, bytes (without the newline); a longer line is skipped and counted."
    },
    "pollIntervalMs": {
      "type": "integer",
      "minimum": 10,
      "maximum": 60000,
      "default": 200,
      "description": "Follow mode: how long a read waits for new lines before reporting a timeout, milliseconds."
    }
  },
  "additionalProperties": false
}`

// DefaultConfig is the config an empty init_config gives.
func DefaultConfig() Config {
	return Config{MaxLineBytes: defaultMaxLineBytes, PollIntervalMs: defaultPollIntervalMs}
}

// ParseConfig decodes an init config: "" means every default; unknown keys, wrong types
// and values out of range are errors (the same rules as configSchema, for callers that
// do not validate against it first).
func ParseConfig(text string) (Config, error) {
	cfg := DefaultConfig()
	if strings.TrimSpace(text) == "" {
		return cfg, nil
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(text)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, fmt.Errorf("init config: %w", err)
	}
	if dec.More() {
		return Config{}, fmt.Errorf("init config: trailing data after the JSON object")
	}
	if cfg.MaxLineBytes < minMaxLineBytes || cfg.MaxLineBytes > maxMaxLineBytes {
		return Config{}, fmt.Errorf("init config: maxLineBytes %d is outside [%d, %d]",
			cfg.MaxLineBytes, minMaxLineBytes, maxMaxLineBytes)
	}
	if cfg.PollIntervalMs < minPollIntervalMs || cfg.PollIntervalMs > maxPollIntervalMs {
		return Config{}, fmt.Errorf("init config: pollIntervalMs %d is outside [%d, %d]",
			cfg.PollIntervalMs, minPollIntervalMs, maxPollIntervalMs)
	}
	return cfg, nil
}

// pollInterval is PollIntervalMs as a duration.
func (c Config) pollInterval() time.Duration {
	return time.Duration(c.PollIntervalMs) * time.Millisecond
}
