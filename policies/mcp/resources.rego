# Network mode and resource limits asked for by a command, against the role grants.
# Both are only judged for principals with a known role (command.no_role says the rest).
package mcp

import rego.v1

network_modes := {"none", "loopback", "host", "restricted"}

default requested_network := "none"

requested_network := n if {
	n := input.network.access
	n != ""
}

network_permitted if requested_network == "none"

network_permitted if {
	some r in known_roles
	requested_network in cfg.roles[r].network
}

default granted_network := "none"

granted_network := requested_network if {
	is_command
	allow
}

roles_allowing(mode) := {r | some r in object.keys(cfg.roles); mode in cfg.roles[r].network}

violations contains ["network.unknown_mode", reason] if {
	is_command
	not requested_network in network_modes
	reason := concat("", [
		"network access ",
		sprintf("%v", [requested_network]),
		" is not one of none, loopback, host, restricted",
	])
}

violations contains ["network.restricted_unsupported", "network access \"restricted\" (a host allow-list) is not supported yet"] if {
	is_command
	requested_network == "restricted"
}

violations contains ["network.host_denied", reason] if {
	is_command
	count(known_roles) > 0
	requested_network == "host"
	not network_permitted
	reason := concat("", [
		"host network access needs one of the roles ",
		text_list(roles_allowing("host")),
		"; principal '",
		principal_id,
		"' has ",
		text_list(principal_roles),
	])
}

violations contains ["network.mode_denied", reason] if {
	is_command
	count(known_roles) > 0
	requested_network in {"loopback"}
	not network_permitted
	reason := concat("", [
		"network access '",
		requested_network,
		"' needs one of the roles ",
		text_list(roles_allowing(requested_network)),
		"; principal '",
		principal_id,
		"' has ",
		text_list(principal_roles),
	])
}

# input.resources key -> grant key and rule id; 0 (or absent) means "what the grant says".
resource_checks := [
	{"ask": "timeout_s", "grant": "timeout_s", "id": "resource.timeout"},
	{"ask": "memory_bytes", "grant": "memory_bytes", "id": "resource.memory"},
	{"ask": "pids", "grant": "pids", "id": "resource.pids"},
	{"ask": "cpu", "grant": "cpu_seconds", "id": "resource.cpu"},
]

violations contains [c.id, reason] if {
	is_command
	count(known_roles) > 0
	some c in resource_checks
	asked := object.get(input, ["resources", c.ask], 0)
	asked > grant[c.grant]
	reason := concat("", [
		"requested ",
		c.ask,
		" ",
		sprintf("%v", [asked]),
		" exceeds the ",
		sprintf("%v", [grant[c.grant]]),
		" granted to roles ",
		text_list(known_roles),
	])
}

violations contains [c.id, reason] if {
	is_command
	some c in resource_checks
	asked := object.get(input, ["resources", c.ask], 0)
	is_number(asked)
	asked < 0
	reason := concat("", ["requested ", c.ask, " ", sprintf("%v", [asked]), " is negative"])
}
