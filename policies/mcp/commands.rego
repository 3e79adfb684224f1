# Command checks: the program (by basename, and where a path is given, where it lives),
# denied tools, best-effort inspection of shell scripts and launcher arguments, and
# environment variables.
#
# The shell/launcher inspection is NOT a security boundary: a script can build a command
# name at run time (`c=cu; ${c}rl`), read it from a file, or run it from python. It only
# turns the obvious cases into a clear, early deny. The boundary is the sandbox (no
# network namespace access, no capabilities, seccomp), design section 7.
package mcp

import rego.v1

command_name := n if {
	n := input.command.name
	is_string(n)
}

default command_name := ""

command_args := [a | some a in object.get(input, ["command", "args"], []); is_string(a)]

env_keys := [k | some k in object.get(input, ["command", "env_keys"], []); is_string(k)]

basename(p) := parts[count(parts) - 1] if parts := split(p, "/")

# "/usr/bin" for "/usr/bin/ls"; "" for "ls".
dirname(p) := concat("/", array.slice(parts, 0, count(parts) - 1)) if parts := split(p, "/")

# What runs: the last path segment of the command name.
program := basename(command_name)

# Facts about the program, each looked up once per query (a lookup in a large data
# object is the costly step in rego-cpp, so rules below test these instead).
program_allowed if cfg.commands.allowed[program]

program_privileged if cfg.commands.privileged[program]

program_network_tool if cfg.commands.network_tools[program]

program_inspected if cfg.commands.shells[program]

program_inspected if cfg.commands.launchers[program]

violations contains ["command.not_allowlisted", "the command name is empty"] if {
	is_command
	command_name == ""
}

violations contains ["command.not_allowlisted", reason] if {
	is_command
	program != ""
	not program_allowed
	not program_privileged
	not program_network_tool
	reason := concat("", ["'", program, "' is not on the command allow-list"])
}

violations contains ["command.privileged_tool", reason] if {
	is_command
	program_privileged
	reason := concat("", ["'", program, "' is a privilege tool and is never allowed"])
}

# With network 'restricted' the gateway's egress proxy bounds where a network tool can go
# (the decision's allowed_hosts), so curl, wget, git and the like may run; in every other
# mode they stay refused.
egress_bounded if {
	requested_network == "restricted"
	network_permitted
}

violations contains ["network.network_tool", reason] if {
	is_command
	program_network_tool
	not egress_bounded
	reason := concat("", ["'", program, "' is a network tool and is not allowed"])
}

# A name with a "/" must be <system dir>/<program>: a binary planted in the workspace
# (/workspace/ls, ./ls) must not pass as the allow-listed tool of the same name.
violations contains ["command.path_not_allowed", reason] if {
	is_command
	contains(command_name, "/")
	not in_system_dir(command_name)
	reason := concat("", [
		"command path '",
		command_name,
		"' is not directly under a system directory (",
		set_text(cfg.commands.system_dirs),
		")",
	])
}

in_system_dir(p) if cfg.commands.system_dirs[dirname(p)]

# ---- shell scripts and launchers (best effort, see header) ----------------------------

# sh -c SCRIPT, bash -ec SCRIPT, ...: the word after a short-option cluster holding "c".
inspected_texts contains args[i + 1] if {
	program_inspected
	is_command
	cfg.commands.shells[program]
	args := command_args
	some i, a in args
	startswith(a, "-")
	regex.match(`^-[A-Za-z]*c[A-Za-z]*$`, a)
	i + 1 < count(args)
}

# env CMD, xargs CMD, timeout 5 CMD, find -exec CMD: every argument may name a program.
inspected_texts contains a if {
	program_inspected
	is_command
	cfg.commands.launchers[program]
	some a in command_args
}

# Whitespace control characters become spaces and quotes and backslashes are dropped
# first, so c'u'rl and c\url read as curl. Done with strings.replace_n, not with regex
# escapes: rego-cpp 1.5 keeps strings in their escaped JSON form internally, which
# replace_n handles and its regex engine does not (a newline never matches \s there).
inspected_words contains w if {
	some text in inspected_texts
	clean := strings.replace_n(
		{"\t": " ", "\n": " ", "\r": " ", "\f": " ", "\u000b": " ", "'": "", "\"": "", "\\": ""},
		text,
	)
	# Shell separators split words (regex.split("[ ;&|()<>{}$=`]+") would, but OPA's Wasm
	# target has no regex.split: the gateway's wasm engine evaluates only what OPA compiles).
	spaced := strings.replace_n(
		{";": " ", "&": " ", "|": " ", "(": " ", ")": " ", "<": " ", ">": " ", "{": " ", "}": " ", "$": " ",
		 "=": " ", "`": " "},
		clean,
	)
	some word in split(spaced, " ")
	w := basename(word)
	w != ""
}

violations contains ["command.privileged_tool", reason] if {
	some w in inspected_words
	cfg.commands.privileged[w]
	reason := concat("", ["the arguments of '", program, "' run '", w, "', a privilege tool"])
}

violations contains ["network.network_tool", reason] if {
	some w in inspected_words
	cfg.commands.network_tools[w]
	not egress_bounded
	reason := concat("", ["the arguments of '", program, "' run '", w, "', a network tool"])
}

# ---- environment ---------------------------------------------------------------------
# Denied: variables that make a program run code other than what the command line shows
# (ld.so(8) LD_*, bash(1) BASH_ENV/ENV/BASH_FUNC_*/SHELLOPTS/PS4/PROMPT_COMMAND,
# PYTHONSTARTUP, PERL5OPT, RUBYOPT, NODE_OPTIONS, JAVA_TOOL_OPTIONS, GCONV_PATH), which
# would also make the audited command line lie. Module search paths (PYTHONPATH,
# NODE_PATH) stay allowed: builds need them and they only reach files in the workspace.

violations contains ["command.env_denied", reason] if {
	is_command
	some k in env_keys
	cfg.env.denied_keys[k]
	reason := concat("", ["environment variable '", k, "' is not allowed"])
}

violations contains ["command.env_denied", reason] if {
	is_command
	some k in env_keys
	cfg.env.denied_prefixes[p] == true
	startswith(k, p)
	reason := concat("", ["environment variable '", k, "' is not allowed (prefix '", p, "')"])
}
