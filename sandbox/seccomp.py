"""Seccomp BPF programs for the sandbox, compiled from declarative profiles.

``compile_filter(profile) -> bytes`` returns the raw ``struct sock_filter`` array that
``bwrap --seccomp FD`` loads (bubblewrap.c reads the fd to EOF and calls
``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)`` right before execvp, after PR_SET_NO_NEW_PRIVS).
Programs are compiled once per profile per process and cached (prepare once, run many).

Shape of a profile: default action ALLOW plus a deny list (``PROFILES[name]``, a tuple of
``Rule``), each rule carrying the reason it exists. Refused calls fail with EPERM (clone3
with ENOSYS so glibc falls back to clone(2), whose flags a filter can inspect; seccomp
cannot dereference clone3's struct pointer). Syscalls of a non-native ABI (i386 via
``int 0x80``, x32 via the 0x40000000 bit) hit libseccomp's "bad arch" action, which we set
to KILL_PROCESS: only x86_64 is added to the filter, so every other audit arch is foreign.

A deny list only refuses what it names, so a syscall added to the kernel after this
libseccomp was built (Linux 6.15's ``open_tree_attr`` is a new *mount* call) would be
allowed silently. ``compile_filter`` therefore puts a short prologue in front of
libseccomp's program: on the native arch, any syscall number above the highest one this
libseccomp can name fails with ENOSYS, what the kernel itself answers for a syscall it
lacks, so libcs fall back to an older call. cBPF jumps are relative and only go forward,
so prepending instructions leaves libseccomp's program intact (seccomp(2),
Documentation/networking/filter.rst).

Sources: Docker's default profile (moby/profiles seccomp/default.json), seccomp(2),
syscall(2) man pages, libseccomp seccomp_rule_add(3) (one comparison per argument per rule,
rules for the same syscall are OR-ed).

Errors: ``SandboxSetupError`` for an unknown profile name; ``SandboxUnavailable`` when
libseccomp cannot build or export the program.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import struct
from dataclasses import dataclass
from types import MappingProxyType

from sandbox.errors import SandboxSetupError, SandboxUnavailable

__all__ = ["PROFILES", "ArgMatch", "Rule", "compile_filter", "highest_known_syscall"]

_LOW32 = 0xFFFFFFFF


@dataclass(frozen=True)
class ArgMatch:
    """``(syscall_arg[index] & mask) == value``, libseccomp SCMP_CMP_MASKED_EQ.

    A 32-bit mask makes libseccomp compare only the low word (its high-word check becomes
    ``hi32 & 0 == 0``): the kernel truncates ``int``/``unsigned int`` arguments such as
    ioctl's request and socket's domain, so 0x100005412 *is* TIOCSTI to the kernel and must
    be refused too.
    """

    index: int
    mask: int
    value: int


@dataclass(frozen=True)
class Rule:
    """Refuse ``syscall`` (when every ``args`` matches) with ``errno``, for ``reason``."""

    syscall: str
    reason: str
    errno: int = errno.EPERM
    args: tuple[ArgMatch, ...] = ()
    # action "log" (SCMP_ACT_LOG = allow and audit) is only used to carve an allowed value
    # out of a syscall whose other values are refused (libseccomp cannot express "!=" chains)
    allow_and_log: bool = False


def _deny(reason: str, *names: str) -> tuple[Rule, ...]:
    return tuple(Rule(name, reason) for name in names)


# clone(2) namespace flags (linux/sched.h). clone's flags are arg 0 on x86_64.
_CLONE_NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}

# personality(2) bits that weaken the process's own hardening (linux/personality.h).
_PERSONALITY_BITS = {
    "ADDR_NO_RANDOMIZE": 0x0040000,  # disables ASLR
    "MMAP_PAGE_ZERO": 0x0100000,  # maps page 0 (kernel NULL-deref exploitation)
    "READ_IMPLIES_EXEC": 0x0400000,  # makes every readable mapping executable
    "ADDR_COMPAT_LAYOUT": 0x0200000,  # legacy, predictable mmap layout
}

_DEFAULT: tuple[Rule, ...] = (
    # --- Docker's default-refused set -----------------------------------------------
    *_deny("process accounting is host-global", "acct"),
    *_deny("kernel keyrings are not namespaced", "add_key", "keyctl", "request_key"),
    *_deny("eBPF programs run in the kernel", "bpf"),
    *_deny("the clock is host-global", "clock_adjtime", "clock_settime", "settimeofday", "stime"),
    *_deny(
        "kernel modules",
        "create_module",
        "delete_module",
        "finit_module",
        "init_module",
        "get_kernel_syms",
        "query_module",
    ),
    *_deny(
        "NUMA policy of host memory",
        "get_mempolicy",
        "mbind",
        "set_mempolicy",
        "set_mempolicy_home_node",
        "move_pages",
        "migrate_pages",
    ),
    *_deny("raw I/O port access", "ioperm", "iopl"),
    *_deny("kcmp leaks kernel pointers ordering", "kcmp"),
    *_deny("loading a new kernel", "kexec_file_load", "kexec_load"),
    *_deny("lookup_dcookie: profiling interface", "lookup_dcookie"),
    *_deny("mounting (old mount API)", "mount", "umount", "umount2", "pivot_root"),
    *_deny("file handles bypass path permission checks", "name_to_handle_at", "open_by_handle_at"),
    *_deny("nfsservctl: removed kernel NFS daemon interface", "nfsservctl"),
    *_deny("perf events leak kernel state and are a common exploit vector", "perf_event_open"),
    *_deny(
        "reading/writing/stealing from other processes",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "pidfd_getfd",
        "process_madvise",
    ),
    *_deny("disk quotas are host-global", "quotactl", "quotactl_fd"),
    *_deny("reboot/halt the host", "reboot"),
    *_deny("namespace creation/entry (bwrap already set ours up)", "setns", "unshare"),
    *_deny("swap is host-global", "swapoff", "swapon"),
    *_deny("obsolete interfaces", "sysfs", "_sysctl", "uselib", "ustat", "vm86", "vm86old"),
    *_deny("userfaultfd stalls kernel page faults (race exploitation)", "userfaultfd"),
    # Docker refuses these unless the container holds the capability (CAP_SYS_ADMIN,
    # CAP_SYSLOG, CAP_SYS_TTY_CONFIG); the sandbox holds none, so they are refused outright.
    *_deny("fanotify watches whole filesystems (CAP_SYS_ADMIN in Docker)", "fanotify_init"),
    *_deny("kernel log (CAP_SYSLOG in Docker)", "syslog"),
    *_deny("terminal hangup (CAP_SYS_TTY_CONFIG in Docker)", "vhangup"),
    *_deny(
        "host identity; the UTS namespace is private but nothing inside needs to change it "
        "(CAP_SYS_ADMIN in Docker)",
        "sethostname",
        "setdomainname",
    ),
    # --- beyond Docker ----------------------------------------------------------------
    *_deny(
        "io_uring bypasses seccomp for the operations it performs",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ),
    *_deny(
        "mounting (new mount API)",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "mount_setattr",
        "open_tree_attr",  # Linux 6.15; newer than libseccomp 2.5, then ENOSYS (see below)
    ),
    *(
        Rule("clone", f"clone with {name}: no new namespaces", args=(ArgMatch(0, bit, bit),))
        for name, bit in _CLONE_NS_FLAGS.items()
    ),
    Rule(
        "clone3",
        "clone3 flags live behind a pointer seccomp cannot read; ENOSYS makes glibc fall "
        "back to clone(2)",
        errno=errno.ENOSYS,
    ),
    Rule(
        "ioctl",
        "TIOCSTI pushes input into the controlling terminal",
        args=(ArgMatch(1, _LOW32, 0x5412),),
    ),
    Rule(
        "ioctl",
        "TIOCLINUX can read/write the virtual console",
        args=(ArgMatch(1, _LOW32, 0x541C),),
    ),
    Rule("socket", "AF_VSOCK reaches the hypervisor", args=(ArgMatch(0, _LOW32, 40),)),
    Rule("socket", "AF_ALG: kernel crypto API, common exploit vector", args=(ArgMatch(0, _LOW32, 38),)),
    Rule(
        "personality",
        "personality(0xffffffff) only queries the current persona",
        args=(ArgMatch(0, _LOW32, _LOW32),),
        allow_and_log=True,
    ),
    *(
        Rule("personality", f"personality {name} weakens hardening", args=(ArgMatch(0, bit, bit),))
        for name, bit in _PERSONALITY_BITS.items()
    ),
)

_STRICT: tuple[Rule, ...] = (
    *_DEFAULT,
    Rule("socket", "AF_NETLINK talks to kernel subsystems", args=(ArgMatch(0, _LOW32, 16),)),
    Rule("socket", "AF_PACKET: raw link-layer access", args=(ArgMatch(0, _LOW32, 17),)),
    *_deny("filesystem root changes", "chroot"),
    *_deny("device nodes", "mknod", "mknodat"),
    *_deny("pidfd signalling is not needed inside one sandbox", "pidfd_open", "pidfd_send_signal"),
)

#: Profile name -> deny rules. Read-only; the reason of every rule is documentation and
#: audit material. Issue 3 deepens these tables; the structure stays.
PROFILES: MappingProxyType[str, tuple[Rule, ...]] = MappingProxyType(
    {"default": _DEFAULT, "strict": _STRICT}
)


@functools.lru_cache(maxsize=None)
def compile_filter(profile: str = "default") -> bytes:
    """Compile ``PROFILES[profile]`` to a BPF program (raw ``struct sock_filter`` bytes,
    8 bytes per instruction) for the native arch. Cached per profile (thread-safe: the
    worst case is two threads compiling the same profile once each).

    Syscall names this libseccomp does not know, or that do not exist natively (negative
    pseudo-numbers, e.g. ``vm86`` on x86_64), are skipped: such a call cannot be made on
    the native ABI, and any other ABI is killed.

    Raises ``SandboxSetupError`` for an unknown profile, ``SandboxUnavailable`` if
    libseccomp fails.
    """
    rules = PROFILES.get(profile)
    if rules is None:
        raise SandboxSetupError(
            f"unknown seccomp profile {profile!r} (known: {', '.join(sorted(PROFILES))})"
        )
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so not found
        raise SandboxUnavailable(
            "seccomp support is missing: apt-get install libseccomp2 and pip install pyseccomp"
        ) from exc
    try:
        flt = sc.SyscallFilter(sc.ALLOW)
        # Only the native arch is in the filter; every other audit arch (i386, x32) gets
        # the bad-arch action (seccomp_attr_set(3) SCMP_FLTATR_ACT_BADARCH).
        flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
        for rule in rules:
            number = sc.resolve_syscall(sc.Arch.NATIVE, rule.syscall)
            if number < 0:
                continue
            action = sc.LOG if rule.allow_and_log else sc.ERRNO(rule.errno)
            args = [sc.Arg(a.index, sc.MASKED_EQ, a.mask, a.value) for a in rule.args]
            flt.add_rule(action, number, *args)
        program = _export(flt)
    except OSError as exc:
        raise SandboxUnavailable(f"libseccomp could not build profile {profile!r}: {exc}") from exc
    return _unknown_syscalls_prologue(highest_known_syscall()) + program


# struct sock_filter (linux/filter.h): u16 code, u8 jt, u8 jf, u32 k; native endianness.
_INSN = struct.Struct("=HBBI")
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = seccomp_data[k]
_JEQ_K, _JGE_K, _JGT_K = 0x15, 0x35, 0x25  # BPF_JMP | BPF_{JEQ,JGE,JGT} | BPF_K
_RET_K = 0x06
_SECCOMP_RET_ERRNO = 0x00050000
# linux/audit.h AUDIT_ARCH_* and the x32 syscall bit (__X32_SYSCALL_BIT), per machine.
_ARCHES = {"x86_64": (0xC000003E, 0x40000000), "aarch64": (0xC00000B7, None)}


@functools.lru_cache(maxsize=1)
def highest_known_syscall() -> int:
    """The highest native syscall number this libseccomp can name (456, futex_requeue,
    for Debian 12's libseccomp 2.5.4). Numbers above it are answered ENOSYS."""
    import pyseccomp as sc

    highest = -1
    for number in range(1024):
        try:
            sc.resolve_syscall(sc.Arch.NATIVE, number)
        except ValueError:
            continue
        highest = number
    if highest < 0:
        raise SandboxUnavailable("libseccomp names no syscall for this architecture")
    return highest


def _unknown_syscalls_prologue(highest: int) -> bytes:
    """``if arch == native and nr <= x32 bit and nr > highest: return ERRNO(ENOSYS)``.

    Offsets are relative to the next instruction; index 6 is libseccomp's first one.
    x32 numbers (bit 30 set) are left to libseccomp's bad-arch action (KILL_PROCESS).
    """
    machine = platform.machine()
    if machine not in _ARCHES:
        raise SandboxUnavailable(f"no seccomp prologue for architecture {machine!r}")
    audit_arch, x32_bit = _ARCHES[machine]
    insns = [
        (_LD_W_ABS, 0, 0, 4),  # 0: A = seccomp_data.arch
        (_JEQ_K, 0, 4, audit_arch),  # 1: foreign arch -> 6
        (_LD_W_ABS, 0, 0, 0),  # 2: A = seccomp_data.nr
        (_JGE_K, 2, 0, x32_bit if x32_bit is not None else 0xFFFFFFFF),  # 3: x32 -> 6
        (_JGT_K, 0, 1, highest),  # 4: unknown -> 5, known -> 6
        (_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.ENOSYS),  # 5
    ]
    return b"".join(_INSN.pack(*insn) for insn in insns)


def _export(flt: object) -> bytes:
    # export_bpf(3) writes to an fd; a memfd keeps it off the filesystem.
    fd = os.memfd_create("seccomp-export")
    try:
        with os.fdopen(fd, "w+b", closefd=False) as fobj:
            flt.export_bpf(fobj)  # type: ignore[attr-defined]
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
