# Layered data: the configuration a request is judged by.

#   data.mcp.config                               global (complete)
#   data.mcp.tenants[T].config                    overrides for tenant T
#   data.mcp.tenants[T].principals[P]             overrides for principal P of tenant T

# Order, lowest to highest: global, then tenant, then principal. Objects merge key by key
# (recursively, as object.union does); any other value (a number, a boolean) is taken
# from the highest layer that sets it. Sets are objects of `member: true`, so a layer
# adds a member with `"cargo": true` and removes an inherited one with `"python3": false`.

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
} else := object.union(object.union(data.mcp.config, tenant_layer), principal_layer)
