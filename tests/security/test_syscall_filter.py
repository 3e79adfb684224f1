"""Raw-syscall attacks against the seccomp filter, through the real sandbox.

Every case runs tests/security/probe.c in a fresh sandbox (default profile, cgroup slot,
a uid of the test range) and asserts the exact outcome: ``ret=-1 errno=1`` (EPERM, the
deny list), ``errno=38`` (ENOSYS: clone3 and every syscall number above
``highest_known_syscall()``), or death by SIGSYS (31, exit 159) for a non-native ABI.
Arguments are chosen so that, without the filter, the kernel would answer something else
wherever the kernel lets us tell (``test_the_filter_is_what_refuses`` measures that in the
same sandbox with an allow-all filter).
"""

from __future__ import annotations

import errno
import shlex
import struct

import pytest

import sandbox.runner
from sandbox.seccomp import PROFILES, highest_known_syscall

EPERM, ENOSYS, SIGSYS = errno.EPERM, errno.ENOSYS, 31

# name -> probe arguments; every one must end (-1, EPERM). Zero pointers are fine: seccomp
# decides before the kernel reads any argument.
DENIED: dict[str, str] = {
    # kernel keyrings (not namespaced)
    "add_key": "sys 248 0 0 0 0 0",
    "request_key": "sys 249 0 0 0 0",
    "keyctl_get_process_keyring": "sys 250 0 -2 1",  # KEYCTL_GET_KEYRING_ID, create
    "keyctl_join_session_keyring": "sys 250 1 0",
    # eBPF, perf, userfaultfd, io_uring
    "bpf": "sys 321 0 0 0",
    "perf_event_open": "sys 298 0 0 -1 -1 0",
    "userfaultfd_user_mode_only": "sys 323 1",
    "io_uring_setup": "sys 425 1 0",
    "io_uring_enter": "sys 426 -1 0 0 0 0 0",
    "io_uring_register": "sys 427 -1 0 0 0",
    # mounting, old and new API
    "mount": "sys 165 0 0 0 0 0",
    "umount2": "sys 166 0 0",
    "pivot_root": "sys 155 0 0",
    "fsopen": "sys 430 0 0",
    "fsconfig": "sys 431 -1 0 0 0 0",
    "fsmount": "sys 432 -1 0 0",
    "fspick": "sys 433 -100 0 0",
    "move_mount": "sys 429 -1 0 -1 0 0",
    "open_tree": "sys 428 -100 0 0",
    "mount_setattr": "sys 442 -100 0 0 0 0",
    # namespaces
    "setns": "sys 308 -1 0",
    "unshare_no_flags": "sys 272 0",
    "unshare_nr_with_bit_32": "sys 0x100000110 0x10000000",  # 272 | 1 << 32: the kernel truncates
    # other processes
    "ptrace_attach_pid1": "ptrace-attach 1",
    "ptrace_seize_pid1": "sys 101 0x4206 1 0 0",
    "ptrace_traceme": "sys 101 0 0 0 0",
    "process_vm_readv": "sys 310 1 0 0 0 0 0",
    "process_vm_writev": "sys 311 1 0 0 0 0 0",
    "pidfd_getfd": "sys 438 0 0 0",
    "process_madvise": "sys 440 0 0 0 0 0",
    "kcmp": "sys 312 1 1 0 0 0",
    # terminal injection: TIOCSTI / TIOCLINUX, also with garbage in the high 32 bits
    "ioctl_tiocsti": "sys 16 0 0x5412 0",
    "ioctl_tiocsti_bit_32": "sys 16 0 0x100005412 0",
    "ioctl_tiocsti_high_word_ones": "sys 16 0 0xffffffff00005412 0",
    "ioctl_tioclinux": "sys 16 0 0x541C 0",
    "ioctl_tioclinux_bit_32": "sys 16 0 0x10000541C 0",
    # socket families
    "socket_af_alg": "sys 41 38 5 0",
    "socket_af_alg_bit_32": "sys 41 0x100000026 5 0",
    "socket_af_vsock": "sys 41 40 1 0",
    "socket_af_vsock_bit_32": "sys 41 0x100000028 1 0",
    # personality bits that weaken hardening
    "personality_addr_no_randomize": "sys 135 0x0040000",
    "personality_mmap_page_zero": "sys 135 0x0100000",
    "personality_read_implies_exec": "sys 135 0x0400000",
    "personality_addr_compat_layout": "sys 135 0x0200000",
    "personality_no_randomize_bit_32": "sys 135 0x100040000",
    # host-global state
    "acct": "sys 163 0",
    "clock_settime": "sys 227 0 0",
    "clock_adjtime": "sys 305 0 0",
    "settimeofday": "sys 164 0 0",
    "reboot": "sys 169 0 0 0 0",
    "swapon": "sys 167 0 0",
    "swapoff": "sys 168 0",
    "syslog": "sys 103 3 0 0",
    "vhangup": "sys 153",
    "sethostname": "sys 170 0 0",
    "setdomainname": "sys 171 0 0",
    "quotactl": "sys 179 0 0 0 0",
    "quotactl_fd": "sys 443 0 0 0 0",
    "fanotify_init": "sys 300 0 0",
    "lookup_dcookie": "sys 212 0 0 0",
    "nfsservctl": "sys 180 0 0 0",
    "name_to_handle_at": "sys 303 -100 0 0 0 0",
    "open_by_handle_at": "sys 304 -100 0 0",
    # kernel code and raw hardware
    "init_module": "sys 175 0 0 0",
    "finit_module": "sys 313 -1 0 0",
    "delete_module": "sys 176 0 0",
    "create_module": "sys 174 0 0",
    "get_kernel_syms": "sys 177 0",
    "query_module": "sys 178 0 0 0 0 0",
    "kexec_load": "sys 246 0 0 0 0",
    "kexec_file_load": "sys 320 -1 -1 0 0 0",
    "ioperm": "sys 173 0 0 0",
    "iopl": "sys 172 0",
    # NUMA policy of host memory
    "mbind": "sys 237 0 0 0 0 0 0",
    "set_mempolicy": "sys 238 0 0 0",
    "get_mempolicy": "sys 239 0 0 0 0 0",
    "migrate_pages": "sys 256 0 0 0 0",
    "move_pages": "sys 279 0 0 0 0 0 0",
    "set_mempolicy_home_node": "sys 450 0 0 0 0",
    # obsolete
    "sysfs": "sys 139 0 0 0",
    "_sysctl": "sys 156 0",
    "uselib": "sys 134 0",
    "ustat": "sys 136 0 0",
}

# clone(2) / unshare(2) with each namespace flag, restated from linux/sched.h rather than
# imported from sandbox.seccomp: the test must not inherit a mistake in the filter table.
NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}

# name -> probe arguments; every one must end (-1, ENOSYS).
UNKNOWN: dict[str, str] = {
    "clone3": "clone3 0",
    "clone3_newuser": "clone3 0x10000000",
    "clone3_newns_newpid": "clone3 0x20020000",
    "statmount_457": "sys 457 0 0 0 0",
    "listmount_458": "sys 458 0 0 0 0",
    "lsm_get_self_attr_459": "sys 459 0 0 0 0",
    "lsm_set_self_attr_460": "sys 460 0 0 0 0",
    "lsm_list_modules_461": "sys 461 0 0 0",
    "mseal_462": "sys 462 0 0 0",
    "setxattrat_463": "sys 463 -100 0 0 0 0 0",
    "getxattrat_464": "sys 464 -100 0 0 0 0 0",
    "listxattrat_465": "sys 465 -100 0 0 0 0",
    "removexattrat_466": "sys 466 -100 0 0 0",
    "open_tree_attr_467": "sys 467 -100 0 0 0 0",  # a *mount* call newer than libseccomp 2.5
    "file_getattr_468": "sys 468 -100 0 0 0 0",
    "file_setattr_469": "sys 469 -100 0 0 0 0",
    "future_1000": "sys 1000",
    "last_below_x32_bit": "sys 0x3fffffff",
}

# name -> probe arguments; every one is killed by SIGSYS before it returns.
KILLED: dict[str, str] = {
    "x32_getpid": "x32 39",
    "x32_ioctl": "x32 16",
    "x32_unshare": "x32 272",
    "i386_int80_getpid": "int80 20",
    "i386_int80_ptrace": "int80 26",
    "i386_int80_unshare": "int80 310",
    "nr_0x7fffffff": "sys 0x7fffffff",  # >= the x32 bit: libseccomp's bad-arch action
}


def run_case(probe, args: str):
    return probe(*shlex.split(args))


@pytest.mark.parametrize("name", sorted(DENIED))
def test_denied_syscall_is_eperm(probe, name):
    assert run_case(probe, DENIED[name]).pair == (-1, EPERM)


@pytest.mark.parametrize("flag", sorted(NAMESPACE_FLAGS))
def test_clone_with_namespace_flag_is_eperm(probe, flag):
    assert probe("clone", hex(NAMESPACE_FLAGS[flag])).pair == (-1, EPERM)


@pytest.mark.parametrize("flag", sorted(NAMESPACE_FLAGS))
def test_unshare_of_namespace_is_eperm(probe, flag):
    assert probe("sys", 272, hex(NAMESPACE_FLAGS[flag])).pair == (-1, EPERM)


@pytest.mark.parametrize("name", sorted(UNKNOWN))
def test_clone3_and_unknown_syscalls_are_enosys(probe, name):
    assert run_case(probe, UNKNOWN[name]).pair == (-1, ENOSYS)


@pytest.mark.parametrize("name", sorted(KILLED))
def test_foreign_abi_is_killed_with_sigsys(probe, name):
    out = run_case(probe, KILLED[name])
    assert (out.signal, out.result.exit_code, out.result.limit_reason) == (SIGSYS, 128 + SIGSYS, None)


# Controls: the filter is specific, the probe works, and the boundary is where it should be.
ALLOWED: dict[str, tuple[str, tuple[int, int] | None]] = {
    "getpid_is_2_in_the_pid_namespace": ("sys 39", (2, 0)),
    "plain_clone_forks": ("clone 0", None),  # a child pid
    "personality_query": ("sys 135 0xffffffff", (0, 0)),
    "personality_linux": ("sys 135 0", (0, 0)),
    "socket_af_unix": ("sys 41 1 1 0", (3, 0)),
    "ioctl_tcgets_on_dev_null_is_enotty": ("sys 16 0 0x5401 0", (-1, errno.ENOTTY)),
    "highest_known_syscall_reaches_the_kernel": ("sys 456 0 0 0 0", (-1, errno.EINVAL)),  # futex_requeue
    "nr_bit_32_is_truncated_like_the_kernel_does": ("sys 0x100000027", (2, 0)),  # getpid
}


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_allowed_controls(probe, name):
    args, expected = ALLOWED[name]
    out = run_case(probe, args)
    if expected is None:
        assert out.ret is not None and out.ret > 2 and out.errno == 0, out
    else:
        assert out.pair == expected


def test_highest_known_syscall_is_456():
    # Debian 12's libseccomp 2.5.4 names up to futex_requeue (456); the ENOSYS cases above
    # start right after it. If this changes, the tables need new numbers.
    assert highest_known_syscall() == 456


def test_every_default_deny_rule_has_an_attack_case():
    """A rule added to the default profile without a case here fails this test."""
    import pyseccomp as sc

    covered = {shlex.split(args)[1] for args in DENIED.values() if args.startswith("sys ")}
    covered |= {"101", "56"}  # ptrace-attach, clone cases
    missing = []
    for rule in PROFILES["default"]:
        if rule.allow_and_log or rule.syscall == "clone3":
            continue
        try:
            number = sc.resolve_syscall(sc.Arch.NATIVE, rule.syscall)
        except ValueError:
            number = -1
        if number < 0:  # not native (vm86, stime) or newer than libseccomp (ENOSYS cases)
            continue
        if str(number) not in covered:
            missing.append(rule.syscall)
    assert missing == []


# The same sandbox with an allow-all filter: what the kernel itself answers. Each of these
# differs from the filtered outcome, so the refusals above come from the filter. The
# CLONE_NEWUSER rows show the layer underneath: bwrap's --disable-userns makes nested user
# namespaces fail with ENOSPC even where seccomp would let the call through.
UNFILTERED: dict[str, tuple[str, str]] = {
    # name: (probe args, expected: "ok" = ret >= 0 and errno 0, or "errno=N")
    "keyctl_get_process_keyring": ("sys 250 0 -2 1", "ok"),
    "userfaultfd_user_mode_only": ("sys 323 1", "ok"),
    "ptrace_traceme": ("sys 101 0 0 0 0", "ok"),
    "personality_addr_no_randomize": ("sys 135 0x0040000", "ok"),
    "process_vm_readv": ("sys 310 1 0 0 0 0 0", "ok"),
    "ioctl_tiocsti_bit_32": ("sys 16 0 0x100005412 0", f"errno={errno.ENOTTY}"),
    "io_uring_setup": ("sys 425 1 0", f"errno={errno.EFAULT}"),
    "clone3": ("clone3 0", "ok"),
    "mseal_462": ("sys 462 0 0 0", "ok"),
    "i386_int80_getpid": ("int80 20", "ok"),
    "clone_newuser": ("clone 0x10000000", f"errno={errno.ENOSPC}"),
    "unshare_newuser": ("sys 272 0x10000000", f"errno={errno.ENOSPC}"),
    "clone3_newuser": ("clone3 0x10000000", f"errno={errno.ENOSPC}"),
}

_ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET | BPF_K, SECCOMP_RET_ALLOW


def test_the_filter_is_what_refuses(monkeypatch, probe, sbx):
    probe.install()
    monkeypatch.setattr(sandbox.runner, "compile_filter", lambda profile: _ALLOW_ALL)
    script = "; ".join(f"printf '%s ' {name}; /workspace/probe {args} || echo died" for name, (args, _) in
                       UNFILTERED.items())
    r = sbx("sh", "-c", script)
    got = dict(line.split(" ", 1) for line in r.stdout.decode().splitlines())
    for name, (_, expected) in UNFILTERED.items():
        fields = dict(part.split("=") for part in got[name].split())
        if expected == "ok":
            assert int(fields["ret"]) >= 0 and fields["errno"] == "0", (name, got[name])
        else:
            assert (fields["ret"], "errno=" + fields["errno"]) == ("-1", expected), (name, got[name])
