// Package mcpaudit is the Falco source and extract plugin for the MCP security gateway's
// audit trail: it reads mcp_audit_v1 lines (one JSON object per line, design section 8)
// from a file, hands each whole line to Falco as an event of the source mcp_audit, and
// extracts every key of the line as the field mcp.<key> with its type.
//
// The files: mcpaudit.go (identity, init), config.go (init config and its schema),
// fields.go with fields_gen.go (the field table), record.go (decoding and checking one
// line), extract.go (field extraction), source.go (open, next batch, counters) and
// tail.go (reading whole lines from a file that grows, rotates or is truncated).
package mcpaudit

import (
	"log"
	"os"

	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk"
	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk/plugins"
)

// The plugin's identity. Name, event source and library (libmcp_audit.so) agree, as
// Falco's tooling expects.
const (
	PluginName  = "mcp_audit"
	EventSource = "mcp_audit"
	// PluginID is in the block reserved for plugins not registered with falcosecurity
	// (1073741824-2147483647, falcosecurity/plugins docs/plugin-ids.md); 999 is shared
	// by everybody's local development. 0x4D435041 is "MCPA" in ASCII.
	PluginID uint32 = 0x4D435041
	// PluginVersion follows the gateway's version.
	PluginVersion = "0.1.0"
)

// Plugin implements source.Plugin and extractor.Plugin for the mcp_audit event source.
// The zero value is not ready: Falco (through the SDK) calls Init first.
type Plugin struct {
	plugins.BasePlugin
	// Config is the init config in force.
	Config Config
	logger *log.Logger

	// The decoded line of the last event extracted from, so that extracting N fields of
	// one event decodes its line once.
	cachedEvtNum uint64
	cached       *Record
	payload      []byte
}

// Info describes the plugin. RequiredAPIVersion is left to the SDK's default (plugin
// API 3.11 for plugin-sdk-go v0.8.3): the SDK compares minor versions as strings, so
// some explicit values (3.2.0 to 3.9.0) panic at load.
func (p *Plugin) Info() *plugins.Info {
	return &plugins.Info{
		ID:          PluginID,
		Name:        PluginName,
		Description: "Reads the MCP security gateway's audit trail (mcp_audit_v1 JSON lines) and extracts each key as mcp.<key>",
		Contact:     "github.com/mcp-security-gateway/mcp-security-gateway",
		Version:     PluginVersion,
		EventSource: EventSource,
	}
}

// InitSchema returns the JSON Schema of the init config.
func (p *Plugin) InitSchema() *sdk.SchemaInfo {
	return &sdk.SchemaInfo{Schema: configSchema}
}

// Init applies the init config; an invalid one is an init error.
func (p *Plugin) Init(config string) error {
	cfg, err := ParseConfig(config)
	if err != nil {
		return err
	}
	p.Config = cfg
	p.logger = log.New(os.Stderr, "["+PluginName+"] ", log.LstdFlags|log.LUTC|log.Lmsgprefix)
	p.cached = nil
	return nil
}

// log is the plugin's logger (stderr), also before Init (tests build a Plugin by hand).
func (p *Plugin) log() *log.Logger {
	if p.logger == nil {
		p.logger = log.New(os.Stderr, "["+PluginName+"] ", log.LstdFlags|log.LUTC|log.Lmsgprefix)
	}
	return p.logger
}
