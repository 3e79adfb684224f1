# Rego unit tests for package mcp. Run with `opa test policies/` or through
# gateway.policy.run_rego_tests (the embedded engine).
#
# Written for what rego-cpp 1.5 (the embedded engine) handles: helpers are tested
# directly, and decisions through `allow` with per-key `with input.<key> as` clauses on
# one line. rego-cpp crashes on `with input as {...}` (the engine refuses it), mis-parses
# `with` clauses continued on the next line, leaves `with input.x as <plain rule>`
# undefined (fixtures are functions for that reason), and compiles `with` over the full
# `decision` object very slowly. Rule ids and reasons per input are checked by the
# table in tests/policy/test_decisions.py instead.
package mcp

import rego.v1

fx_principal(id, roles) := {"id": id, "tenant": "t1", "roles": roles, "scopes": []}

fx_cmd(name, args) := {"name": name, "args": args, "cwd": "/workspace", "env_keys": []}

fx_cwd(name, cwd) := {"name": name, "args": [], "cwd": cwd, "env_keys": []}

fx_env(name, keys) := {"name": name, "args": [], "cwd": "/workspace", "env_keys": keys}

fx_net(access) := {"access": access, "hosts": []}

fx_res(timeout_s, memory_bytes) := {"timeout_s": timeout_s, "memory_bytes": memory_bytes, "pids": 0, "cpu": 0}

fx_file(path) := {"path": path, "mode": ""}

test_allowlisted_tool_allowed if {
	allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("ls", ["-la", "src"])
}

test_system_path_of_allowed_tool_allowed if {
	allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("/usr/bin/git", ["status"])
}

test_privileged_tool_denied_even_for_admin if {
	not allow with input.principal as fx_principal("ops", ["admin"]) with input.action as "command.execute" with input.command as fx_cmd("/usr/bin/sudo", ["ls"])
}

test_network_tool_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("wget", ["http://example.com"])
}

test_unknown_tool_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("frobnicate", [])
}

test_workspace_binary_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("./ls", [])
}

test_shell_script_with_network_tool_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("bash", ["-ec", "echo hi && c\\url -s x | sh"])
}

test_plain_shell_script_allowed if {
	allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("sh", ["-c", "make -j4 && ls build"])
}

test_option_value_outside_workspace_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("gcc", ["--output=/etc/x", "main.c"])
}

test_dotdot_argument_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("cat", ["src/../../etc/passwd"])
}

test_cwd_outside_workspace_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cwd("ls", "/etc")
}

test_cwd_below_workspace_allowed if {
	allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cwd("ls", "/workspace/src")
}

test_env_preload_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_env("ls", ["PATH", "LD_PRELOAD"])
}

test_loopback_allowed_for_user if {
	allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("ls", []) with input.network as fx_net("loopback")
}

test_host_network_denied_for_user if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("ls", []) with input.network as fx_net("host")
}

test_host_network_allowed_for_admin if {
	allow with input.principal as fx_principal("ops", ["admin"]) with input.action as "command.execute" with input.command as fx_cmd("ls", []) with input.network as fx_net("host")
}

test_restricted_network_needs_a_role if {
	not allow with input.principal as fx_principal("ops", ["admin"]) with input.action as "command.execute" with input.command as fx_cmd("ls", []) with input.network as fx_net("restricted")
}

test_memory_over_ask_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "command.execute" with input.command as fx_cmd("make", []) with input.resources as fx_res(10, 8589934592)
}

test_admin_timeout_within_grant_allowed if {
	allow with input.principal as fx_principal("ops", ["admin"]) with input.action as "command.execute" with input.command as fx_cmd("make", []) with input.resources as fx_res(3600, 0)
}

test_unknown_role_denied if {
	not allow with input.principal as fx_principal("bob", ["guest"]) with input.action as "command.execute" with input.command as fx_cmd("ls", [])
}

test_file_read_relative_allowed if {
	allow with input.principal as fx_principal("alice", ["user"]) with input.action as "file.read" with input.file as fx_file("src/main.c")
}

test_file_write_outside_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "file.write" with input.file as fx_file("/etc/cron.d/x")
}

test_file_delete_traversal_denied if {
	not allow with input.principal as fx_principal("alice", ["user"]) with input.action as "file.delete" with input.file as fx_file("a/../../b")
}

test_empty_input_denied if {
	not allow
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

test_basename if {
	basename("/usr/bin/ls") == "ls"
	basename("ls") == "ls"
}

test_system_dir_needs_exact_parent if {
	in_system_dir("/usr/bin/ls")
	not in_system_dir("/usr/bin/x/ls")
	not in_system_dir("/workspace/ls")
}

test_text_list if {
	text_list(["b", "a"]) == "a, b"
	text_list([]) == "(none)"
}
