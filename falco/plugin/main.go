// Command plugin is the mcp_audit Falco plugin, built as a shared library:
//
//	GODEBUG=cgocheck=0 go build -buildmode=c-shared -o libmcp_audit.so ./plugin
package main

import (
	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk/plugins"
	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk/plugins/extractor"
	"github.com/falcosecurity/plugin-sdk-go/pkg/sdk/plugins/source"
	"github.com/mcp-security-gateway/mcp-security-gateway/falco/pkg/mcpaudit"
)

func init() {
	plugins.SetFactory(func() plugins.Plugin {
		p := &mcpaudit.Plugin{}
		source.Register(p)
		extractor.Register(p)
		return p
	})
}

func main() {}
