# The gateway's decision: data.mcp.decision (design section 6).
#
# Every check adds a [rule_id, reason] pair to `violations`; the request is allowed
# only when there are none AND a positive rule (`permitted`) matched, so a request the
# policy does not understand is denied, never waved through. The decision object is
# always defined, whatever the request.
#
# Tunable values live in data, not here (see layers.rego for how global, tenant and
# principal data combine). Every set in data is an object whose keys are the
# members and whose values are true (a member) or false (removed by an override layer),
# so `cfg.commands.allowed[program]` is a lookup, not a scan.
package mcp

import rego.v1

decision := {
	"allow": allow,
	"reasons": reasons,
	"rule_ids": rule_ids,
	"sandbox": sandbox,
}

default allow := false

allow if count(deny) == 0

# deny is a set of [rule_id, reason] pairs.
deny := violations | fallback

# Reached only when no specific rule fired and nothing positively allowed the request.
fallback contains ["command.default_deny", "no policy rule allows this request"] if {
	count(violations) == 0
	not permitted
}

# Sorted by rule id then reason, so identical inputs give identical decisions.
reasons := [d[1] | some d in sort(deny)]

rule_ids := sort({d[0] | some d in deny}) if count(deny) > 0

rule_ids := allow_rule_ids if count(deny) == 0

default allow_rule_ids := []

allow_rule_ids := ["command.allowlisted"] if is_command

allow_rule_ids := ["file.allowed"] if is_file_action

allow_rule_ids := ["tool.allowed"] if is_tool_call

# ---- action and roles ----------------------------------------------------------

default action := ""

action := input.action if is_string(input.action)

is_command if action == "command.execute"

file_actions := {"file.read", "file.write", "file.delete"}

is_file_action if action in file_actions

action_category := "command" if is_command

action_category := "file" if is_file_action

is_tool_call if action == "tool.call"

action_category := "tool" if is_tool_call

default principal_id := ""

principal_id := input.principal.id if is_string(input.principal.id)

default tenant_id := ""

tenant_id := input.principal.tenant if is_string(input.principal.tenant)

principal_roles := [r | some r in object.get(input, ["principal", "roles"], []); is_string(r)]

# Roles of the principal that the (layered) data defines.
known_roles := {r | some r in principal_roles; cfg.roles[r]}

action_permitted if {
	some r in known_roles
	cfg.roles[r].actions[action]
}

violations contains ["command.unknown_action", reason] if {
	not is_command
	not is_file_action
	not is_tool_call
	reason := concat("", [
		"action '",
		action,
		"' is not one of command.execute, file.read, file.write, file.delete, tool.call",
	])
}

violations contains ["command.no_role", reason] if {
	count(known_roles) == 0
	reason := concat("", [
		"principal '",
		principal_id,
		"' has no recognised role (roles: ",
		text_list(principal_roles),
		")",
	])
}

violations contains [concat("", [action_category, ".action_denied"]), reason] if {
	count(known_roles) > 0
	not action_permitted
	reason := concat("", [
		"none of the roles of principal '",
		principal_id,
		"' (",
		text_list(known_roles),
		") may perform ",
		action,
	])
}

# Positive evidence; see the header comment.
permitted if {
	is_command
	action_permitted
	program_allowed
}

# A network tool, with its traffic bounded by the egress proxy (commands.rego).
permitted if {
	is_command
	action_permitted
	program_network_tool
	egress_bounded
}

permitted if {
	is_file_action
	action_permitted
	file_path != ""
}

permitted if {
	is_tool_call
	action_permitted
	tool_allowed
}

# ---- upstream MCP tools (action tool.call) -----------------------------------------

default tool_server := ""

tool_server := input.tool.server if is_string(input.tool.server)

default tool_name := ""

tool_name := input.tool.name if is_string(input.tool.name)

# "<server>__<tool>", as the gateway serves the tool.
tool_id := concat("__", [tool_server, tool_name])

tool_allowed if cfg.tools.allowed[tool_id]

tool_allowed if {
	tool_server != ""
	cfg.tools.allowed[concat("__", [tool_server, "*"])]
}

violations contains ["tool.not_allowed", reason] if {
	is_tool_call
	action_permitted
	not tool_allowed
	reason := concat("", ["upstream tool '", tool_id, "' is not in tools.allowed"])
}

# ---- the sandbox grant -----------------------------------------------------------

grant_fields := ["timeout_s", "memory_bytes", "pids", "cpu_seconds", "cpu_cores"]

# The grant of the principal's one known role, or per field the largest among several
# (0 without a known role).
grant := cfg.roles[r].grant if {
	count(known_roles) == 1
	some r in known_roles
} else := {k: v |
	some k in grant_fields
	v := max({0} | {g | some r in known_roles; g := cfg.roles[r].grant[k]})
}

sandbox := {
	"network": granted_network,
	"allowed_hosts": granted_hosts,
	"timeout_s": grant.timeout_s,
	"memory_bytes": grant.memory_bytes,
	"pids": grant.pids,
	"cpu_seconds": grant.cpu_seconds,
	"ro_paths": members(cfg.sandbox.ro_paths),
	"rw_paths": members(cfg.sandbox.rw_paths),
}

# ---- helpers -----------------------------------------------------------------------

# The members of a data set (keys whose value is true), sorted.
members(s) := sort([k | s[k] == true])

# "a, b" for reasons, from an array or set of strings.
#
# Reasons are built with concat(), not sprintf: in rego-cpp 1.5 sprintf renders strings
# produced by some built-ins (concat, lower, object.get defaults) with their JSON quotes,
# which corrupts the decision document; %v also renders sets differently in OPA and
# rego-cpp; and OPA's Wasm target (the gateway's wasm engine) has no sprintf. Numbers are
# written with json.marshal.
text_list(xs) := "(none)" if count(xs) == 0

text_list(xs) := concat(", ", sort([x | some x in xs; is_string(x)])) if count(xs) > 0

# Any value as reason text: a string as it is, anything else as JSON.
value_text(x) := x if is_string(x)

value_text(x) := json.marshal(x) if not is_string(x)

# "a, b" for reasons, from a data set.
set_text(s) := text_list(members(s))
