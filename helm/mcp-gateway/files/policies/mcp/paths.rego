# Path checks: command arguments and working directory (command.execute), and the
# path of file.read / file.write / file.delete. All paths are sandbox paths.
#
# Path inspection is lexical: policy sees strings, not a file system. A symlink inside
# /workspace (say /workspace/etc -> /etc) passes here and is harmless, because it
# resolves inside the sandbox, whose root is read-only and holds no host state beyond
# what bwrap binds (design section 7); `..` segments are refused outright so a path can
# never name a place outside the roots lexically either.
package mcp

import rego.v1

# p is root itself or below it ("/workspacefoo" is not below "/workspace").
under(p, root) if p == root

under(p, root) if startswith(p, concat("", [root, "/"]))

# roots is a data set (root: true).
under_any(p, roots) if {
	roots[root] == true
	under(p, root)
}

has_dotdot(p) if ".." in split(p, "/")

# [argument, path it names]: the argument itself, the value of --opt=/x or key=/x,
# and the attached value of -I/x style short options.
arg_refs contains [a, a] if {
	some a in command_args
}

arg_refs contains [a, substring(a, i + 1, -1)] if {
	some a in command_args
	i := indexof(a, "=")
	i >= 0
}

arg_refs contains [a, substring(a, 2, -1)] if {
	some a in command_args
	regex.match(`^-[A-Za-z]/`, a)
}

violations contains ["file.path_traversal", reason] if {
	is_command
	some [a, p] in arg_refs
	has_dotdot(p)
	reason := concat("", ["argument '", a, "' contains a '..' path segment"])
}

violations contains ["file.outside_workspace", reason] if {
	is_command
	some [a, p] in arg_refs
	a == p
	startswith(p, "/")
	not under_any(p, cfg.paths.arg_roots)
	reason := concat("", [
		"path '",
		p,
		"' is outside the allowed directories (",
		set_text(cfg.paths.arg_roots),
		")",
	])
}

violations contains ["file.outside_workspace", reason] if {
	is_command
	some [a, p] in arg_refs
	a != p
	startswith(p, "/")
	not under_any(p, cfg.paths.arg_roots)
	reason := concat("", [
		"path '",
		p,
		"' in argument '",
		a,
		"' is outside the allowed directories (",
		set_text(cfg.paths.arg_roots),
		")",
	])
}

# ---- working directory (empty means the default, /workspace) ----------------------

cwd := c if {
	c := input.command.cwd
	is_string(c)
}

default cwd := ""

violations contains ["file.path_traversal", reason] if {
	is_command
	has_dotdot(cwd)
	reason := concat("", ["working directory '", cwd, "' contains a '..' path segment"])
}

violations contains ["file.outside_workspace", reason] if {
	is_command
	cwd != ""
	not under_any(cwd, cfg.paths.cwd_roots)
	reason := concat("", [
		"working directory '",
		cwd,
		"' is not an absolute path under ",
		set_text(cfg.paths.cwd_roots),
	])
}

# ---- file actions: relative paths are relative to /workspace ---------------------

file_path := p if {
	p := input.file.path
	is_string(p)
}

default file_path := ""

violations contains ["file.empty_path", "the file path is empty"] if {
	is_file_action
	file_path == ""
}

violations contains ["file.path_traversal", reason] if {
	is_file_action
	has_dotdot(file_path)
	reason := concat("", ["file path '", file_path, "' contains a '..' path segment"])
}

violations contains ["file.outside_workspace", reason] if {
	is_file_action
	startswith(file_path, "/")
	not under_any(file_path, cfg.paths.file_roots)
	reason := concat("", [
		"file path '",
		file_path,
		"' is outside ",
		set_text(cfg.paths.file_roots),
	])
}
