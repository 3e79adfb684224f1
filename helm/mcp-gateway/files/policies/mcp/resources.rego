# Network access and resource limits asked for by a command, against the role grants.
# Both are only judged for principals with a known role (command.no_role says the rest).
package mcp

import rego.v1

network_modes := {"none", "loopback", "host", "restricted"}

default requested_network := "none"

requested_network := n if {
	n := input.network.access
	n != ""
}

requested_hosts := [h | some h in object.get(input, ["network", "hosts"], []); is_string(h)]

network_permitted if requested_network == "none"

network_permitted if {
	some r in known_roles
	cfg.roles[r].network[requested_network]
}

default granted_network := "none"

granted_network := requested_network if {
	is_command
	allow
}

# restricted mode: the hosts a sandbox may reach (allowed_hosts); empty otherwise.
default granted_hosts := []

granted_hosts := members(cfg.network.allowed_hosts) if granted_network == "restricted"

# object.get, not cfg.roles[r].network[mode]: rego-cpp 1.5 ignores a function argument used
# as a key inside a comprehension (and would list every role).
roles_allowing(mode) := {r | some r in object.keys(cfg.roles); object.get(cfg.roles[r].network, mode, false) == true}

violations contains ["network.unknown_mode", reason] if {
	is_command
	not requested_network in network_modes
	reason := concat("", [
		"network access ",
		value_text(requested_network),
		" is not one of none, loopback, host, restricted",
	])
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
	requested_network in {"loopback", "restricted"}
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

# Hosts named by the request must be on the allow-list, and only restricted mode takes any.
violations contains ["network.host_not_allowed", reason] if {
	is_command
	requested_network == "restricted"
	some h in requested_hosts
	not host_allowed(h)
	reason := concat("", [
		"host '",
		h,
		"' is not on the network allow-list (",
		set_text(cfg.network.allowed_hosts),
		")",
	])
}

violations contains ["network.hosts_need_restricted", reason] if {
	is_command
	requested_network != "restricted"
	count(requested_hosts) > 0
	reason := concat("", ["network hosts are only taken with access 'restricted', not '", requested_network, "'"])
}

# An exact name, or a "*.example.com" entry for any name below example.com.
host_allowed(h) if cfg.network.allowed_hosts[h]

host_allowed(h) if {
	cfg.network.allowed_hosts[pattern] == true
	startswith(pattern, "*.")
	endswith(h, substring(pattern, 1, -1))
}

# input.resources key -> [grant key, rule id, unit]. 0 (or absent) means "what the grant says".
resource_rules := {
	"timeout_s": ["timeout_s", "resource.timeout", "s"],
	"memory_bytes": ["memory_bytes", "resource.memory", "bytes"],
	"pids": ["pids", "resource.pids", "processes"],
	"cpu": ["cpu_cores", "resource.cpu", "cores"],
}

# [rule, asked] for every known resource the request names.
asked_resources contains [rule, asked] if {
	is_command
	some key, asked in input.resources
	rule := resource_rules[key]
}

violations contains [rule[1], reason] if {
	count(known_roles) > 0
	some [rule, asked] in asked_resources
	is_number(asked)
	asked > grant[rule[0]]
	reason := concat("", [
		"requested ",
		rule[0],
		" ",
		json.marshal(asked),
		" exceeds the ",
		json.marshal(grant[rule[0]]),
		" ",
		rule[2],
		" granted to roles ",
		text_list(known_roles),
	])
}

violations contains [rule[1], reason] if {
	some [rule, asked] in asked_resources
	is_number(asked)
	asked < 0
	reason := concat("", ["requested ", rule[0], " ", json.marshal(asked), " is negative"])
}

violations contains [rule[1], reason] if {
	some [rule, asked] in asked_resources
	not is_number(asked)
	reason := concat("", ["requested ", rule[0], " is not a number"])
}
