"""The seccomp profiles compile, are cached, and every rule says why it exists."""

from __future__ import annotations

import pytest

import sandbox
from sandbox import SandboxSetupError, compile_filter
from sandbox.seccomp import PROFILES

_BPF_INSN = 8  # sizeof(struct sock_filter)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profile_compiles_to_bpf(profile):
    bpf = compile_filter(profile)
    assert isinstance(bpf, bytes)
    assert len(bpf) > 0 and len(bpf) % _BPF_INSN == 0
    assert len(bpf) // _BPF_INSN <= 4096  # BPF_MAXINSNS


def test_filter_is_cached_per_profile():
    assert compile_filter("default") is compile_filter("default")
    assert compile_filter("strict") != compile_filter("default")


def test_unknown_profile_is_a_setup_error():
    with pytest.raises(SandboxSetupError, match="unknown seccomp profile"):
        compile_filter("no-such-profile")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_rule_has_a_reason(profile):
    for rule in PROFILES[profile]:
        assert rule.syscall and rule.reason.strip(), rule


def test_default_profile_covers_the_design_deny_list():
    names = {rule.syscall for rule in PROFILES["default"]}
    required = {
        "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
        "delete_module", "finit_module", "get_kernel_syms", "get_mempolicy", "init_module",
        "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
        "mbind", "mount", "move_pages", "name_to_handle_at", "nfsservctl", "open_by_handle_at",
        "perf_event_open", "personality", "pivot_root", "process_vm_readv", "process_vm_writev",
        "ptrace", "query_module", "quotactl", "reboot", "request_key", "set_mempolicy", "setns",
        "settimeofday", "stime", "swapoff", "swapon", "sysfs", "_sysctl", "umount", "umount2",
        "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old", "pidfd_getfd",
        "io_uring_setup", "io_uring_enter", "io_uring_register", "fsopen", "fsconfig", "fsmount",
        "fspick", "move_mount", "open_tree", "mount_setattr", "clone", "clone3", "ioctl", "socket",
    }
    assert required <= names


def test_strict_is_a_superset_of_default():
    assert set(PROFILES["default"]) <= set(PROFILES["strict"])


def test_package_never_imports_gateway():
    import pathlib

    root = pathlib.Path(sandbox.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "import gateway" not in text and "from gateway" not in text, path


def test_unknown_syscall_prologue_precedes_libseccomp():
    """The first six instructions answer ENOSYS for native numbers above the highest one
    libseccomp can name; the rest is libseccomp's own program (checked by the security
    suite against the kernel)."""
    import errno
    import struct

    import pyseccomp

    from sandbox.seccomp import highest_known_syscall

    highest = highest_known_syscall()
    pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, highest)  # it has a name
    for number in range(highest + 1, 1024):
        with pytest.raises(ValueError):
            pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, number)
    insns = [struct.unpack("=HBBI", compile_filter("default")[i * 8:(i + 1) * 8]) for i in range(6)]
    assert insns[0] == (0x20, 0, 0, 4)  # A = arch
    assert insns[2] == (0x20, 0, 0, 0)  # A = nr
    assert insns[4] == (0x25, 0, 1, highest)  # nr > highest -> next, else skip the return
    assert insns[5] == (0x06, 0, 0, 0x00050000 | errno.ENOSYS)
