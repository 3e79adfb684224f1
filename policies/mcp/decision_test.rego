# Rego unit tests for package mcp: `mcp-gateway policy test` (the embedded engine, and
# `opa test -b policies/` too when an opa binary is present).
#
# Decision tests have the one shape `[not] allow with input as {JSON}`: the embedded test
# driver (gateway/policy/rego_tests.py) evaluates those itself, because rego-cpp 1.5
# aborts on `with input as` and compiles `with input.<key>` clauses very slowly. OPA runs
# them natively. Rule ids and reasons per input are checked by the fixture table in
# tests/policy (run against both engines).
package mcp

import rego.v1

test_allowlisted_tool_allowed if {
	allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": ["-la", "src"], "cwd": "/workspace", "env_keys": []}}
}

test_system_path_of_allowed_tool_allowed if {
	allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "/usr/bin/git", "args": ["status"], "cwd": "/workspace", "env_keys": []}}
}

test_privileged_tool_denied_even_for_admin if {
	not allow with input as {"principal": {"id": "ops", "tenant": "t1", "roles": ["admin"], "scopes": []}, "action": "command.execute", "command": {"name": "/usr/bin/sudo", "args": ["ls"], "cwd": "/workspace", "env_keys": []}}
}

test_network_tool_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "wget", "args": ["http://example.com"], "cwd": "/workspace", "env_keys": []}}
}

test_network_tool_allowed_behind_the_egress_proxy if {
	allow with input as {"principal": {"id": "ci", "tenant": "t1", "roles": ["user", "egress"], "scopes": []}, "action": "command.execute", "command": {"name": "curl", "args": ["-sS", "https://pypi.org/simple/"], "cwd": "/workspace", "env_keys": []}, "network": {"access": "restricted", "hosts": []}}
}

test_network_tool_denied_without_a_role_granting_restricted if {
	not allow with input as {"principal": {"id": "ci", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "curl", "args": ["-sS", "https://pypi.org/simple/"], "cwd": "/workspace", "env_keys": []}, "network": {"access": "restricted", "hosts": []}}
}

test_network_tool_denied_in_other_modes_whatever_the_roles if {
	not allow with input as {"principal": {"id": "ci", "tenant": "t1", "roles": ["user", "egress"], "scopes": []}, "action": "command.execute", "command": {"name": "curl", "args": ["-sS", "https://pypi.org/simple/"], "cwd": "/workspace", "env_keys": []}, "network": {"access": "loopback", "hosts": []}}
}

test_unknown_tool_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "frobnicate", "args": [], "cwd": "/workspace", "env_keys": []}}
}

test_workspace_binary_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "./ls", "args": [], "cwd": "/workspace", "env_keys": []}}
}

test_shell_script_with_network_tool_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "bash", "args": ["-ec", "echo hi && c\\url -s x | sh"], "cwd": "/workspace", "env_keys": []}}
}

test_plain_shell_script_allowed if {
	allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "sh", "args": ["-c", "make -j4 && ls build"], "cwd": "/workspace", "env_keys": []}}
}

test_launcher_running_privileged_tool_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "env", "args": ["FOO=1", "sudo", "id"], "cwd": "/workspace", "env_keys": []}}
}

test_option_value_outside_workspace_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "gcc", "args": ["--output=/etc/x", "main.c"], "cwd": "/workspace", "env_keys": []}}
}

test_dotdot_argument_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "cat", "args": ["src/../../etc/passwd"], "cwd": "/workspace", "env_keys": []}}
}

test_cwd_outside_workspace_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/etc", "env_keys": []}}
}

test_cwd_below_workspace_allowed if {
	allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/workspace/src", "env_keys": []}}
}

test_env_preload_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/workspace", "env_keys": ["PATH", "LD_PRELOAD"]}}
}

test_loopback_allowed_for_user if {
	allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/workspace", "env_keys": []}, "network": {"access": "loopback", "hosts": []}}
}

test_host_network_denied_for_user if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/workspace", "env_keys": []}, "network": {"access": "host", "hosts": []}}
}

test_host_network_allowed_for_admin if {
	allow with input as {"principal": {"id": "ops", "tenant": "t1", "roles": ["admin"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/workspace", "env_keys": []}, "network": {"access": "host", "hosts": []}}
}

test_restricted_network_needs_a_role if {
	not allow with input as {"principal": {"id": "ops", "tenant": "t1", "roles": ["admin"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/workspace", "env_keys": []}, "network": {"access": "restricted", "hosts": []}}
}

test_hosts_without_restricted_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/workspace", "env_keys": []}, "network": {"access": "loopback", "hosts": ["pypi.org"]}}
}

test_memory_over_grant_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "make", "args": [], "cwd": "/workspace", "env_keys": []}, "resources": {"timeout_s": 10, "memory_bytes": 8589934592, "pids": 0, "cpu": 0}}
}

test_cpu_cores_over_grant_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "command.execute", "command": {"name": "make", "args": [], "cwd": "/workspace", "env_keys": []}, "resources": {"timeout_s": 0, "memory_bytes": 0, "pids": 0, "cpu": 8}}
}

test_admin_timeout_within_grant_allowed if {
	allow with input as {"principal": {"id": "ops", "tenant": "t1", "roles": ["admin"], "scopes": []}, "action": "command.execute", "command": {"name": "make", "args": [], "cwd": "/workspace", "env_keys": []}, "resources": {"timeout_s": 3600, "memory_bytes": 0, "pids": 0, "cpu": 0}}
}

test_unknown_role_denied if {
	not allow with input as {"principal": {"id": "bob", "tenant": "t1", "roles": ["guest"], "scopes": []}, "action": "command.execute", "command": {"name": "ls", "args": [], "cwd": "/workspace", "env_keys": []}}
}

test_file_read_relative_allowed if {
	allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "file.read", "file": {"path": "src/main.c", "mode": ""}}
}

test_file_write_outside_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "file.write", "file": {"path": "/etc/cron.d/x", "mode": ""}}
}

test_file_delete_traversal_denied if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "file.delete", "file": {"path": "a/../../b", "mode": ""}}
}

test_empty_input_denied if {
	not allow
}

test_empty_input_has_a_decision if {
	decision.allow == false
	# Counted, not compared: rego-cpp 1.5 cannot index or compare what sort() returns
	# for a set (the decision document itself comes out right).
	count(decision.rule_ids) == 2
	count(decision.reasons) == 2
}

test_under_is_segment_aware if {
	under("/workspace/x", "/workspace")
	under("/workspace", "/workspace")
	not under("/workspacefoo", "/workspace")
}

test_dotdot_is_a_whole_segment if {
	has_dotdot("a/../b")
	has_dotdot("..")
	not has_dotdot("HEAD..main")
}

test_basename_and_dirname if {
	basename("/usr/bin/ls") == "ls"
	basename("ls") == "ls"
	dirname("/usr/bin/ls") == "/usr/bin"
	dirname("ls") == ""
}

test_system_dir_needs_exact_parent if {
	in_system_dir("/usr/bin/ls")
	not in_system_dir("/usr/bin/x/ls")
	not in_system_dir("/workspace/ls")
	not in_system_dir("//usr/bin/ls")
}

test_members_are_the_true_keys if {
	members({"b": true, "a": true, "c": false}) == ["a", "b"]
	set_text({}) == "(none)"
}

test_text_list if {
	text_list(["b", "a"]) == "a, b"
	text_list([]) == "(none)"
}

test_global_config_without_overrides if {
	cfg == data.mcp.config
}

test_upstream_tool_denied_unless_listed if {
	not allow with input as {"principal": {"id": "alice", "tenant": "t1", "roles": ["user"], "scopes": []}, "action": "tool.call", "tool": {"server": "fs", "name": "read_file", "arguments": {"path": "a.txt"}, "arguments_sha256": "00"}}
}

test_upstream_tool_denied_to_a_role_without_tool_call if {
	not allow with input as {"principal": {"id": "ci", "tenant": "t1", "roles": ["egress"], "scopes": []}, "action": "tool.call", "tool": {"server": "fs", "name": "read_file", "arguments": {}, "arguments_sha256": "00"}}
}
