# Layered data: the configuration a request is judged by.
#
#   data.mcp.config                               global (complete)
#   data.mcp.tenants[T].config                    overrides for tenant T
#   data.mcp.tenants[T].principals[P]             overrides for principal P of tenant T
#
# Order, lowest to highest: global, then tenant, then principal. Objects merge key by key
# (recursively, see layer_union); any other value (a number, a boolean) is taken
# from the highest layer that sets it. Sets are objects of `member: true`, so a layer
# adds a member with `"cargo": true` and removes an inherited one with `"python3": false`.
#
# The layers cannot name one another, so no other order (and no cycle) can be written.
# The gateway validates every layer against mcp/config.schema.json on each load (unknown
# keys, wrong types) and refuses a bundle that fails; `mcp-gateway policy check` does
# the same for CI.

package mcp

import rego.v1

# (Never object.get(data.mcp, ...): data.mcp holds the rules of this package too, and
# reading it whole from one of them is recursion.)
default tenant_layer := {}

tenant_layer := data.mcp.tenants[tenant_id].config

default principal_layer := {}

principal_layer := data.mcp.tenants[tenant_id].principals[principal_id]

# Without overrides for this caller (the common case) the global data is used as is:
# rego-cpp reads data directly far faster than a computed object.
cfg := data.mcp.config if {
	count(tenant_layer) == 0
	count(principal_layer) == 0
} else := layer_union(layer_union(data.mcp.config, tenant_layer), principal_layer)

# b's settings over a's, at the depths the configuration has (mcp/config.schema.json):
# section -> set, and roles -> role -> part. Spelled out level by level because
# object.union merges nested objects in OPA but replaces them in rego-cpp 1.5; here it
# only ever sees flat objects, where both agree.
layer_union(a, b) := {
	"commands": union2(object.get(a, "commands", {}), object.get(b, "commands", {})),
	"env": union2(object.get(a, "env", {}), object.get(b, "env", {})),
	"paths": union2(object.get(a, "paths", {}), object.get(b, "paths", {})),
	"network": union2(object.get(a, "network", {}), object.get(b, "network", {})),
	"sandbox": union2(object.get(a, "sandbox", {}), object.get(b, "sandbox", {})),
	"tools": union2(object.get(a, "tools", {}), object.get(b, "tools", {})),
	"roles": union3(object.get(a, "roles", {}), object.get(b, "roles", {})),
}

union2(a, b) := {k: object.union(object.get(a, k, {}), object.get(b, k, {})) |
	keys := object.keys(a) | object.keys(b)
	some k in keys
}

union3(a, b) := {k: union2(object.get(a, k, {}), object.get(b, k, {})) |
	keys := object.keys(a) | object.keys(b)
	some k in keys
}
