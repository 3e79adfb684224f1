"""Errors raised by the sandbox library.

The whole tree::

    SandboxError                  base class; never raised itself
    +-- SandboxUnavailable        the host cannot sandbox at all (missing bwrap, user
    |                             namespaces disabled, no seccomp). The message says exactly
    |                             what to install or enable. Raised by ``probe()``.
    +-- SandboxSetupError         this one spec cannot be run: invalid env/paths, an
                                  unsupported mode (``NetworkMode.RESTRICTED``), ``run_as``
                                  missing while the caller is root, an unknown seccomp
                                  profile. Raised by ``build_argv()``, ``compile_filter()``
                                  and ``run()`` before anything is spawned.

A command that *was* spawned never raises: ``run()`` returns a ``SandboxResult`` whose
``setup_error`` is set when bwrap or the exec of the command failed before the command ran.
"""

from __future__ import annotations

__all__ = ["SandboxError", "SandboxSetupError", "SandboxUnavailable"]


class SandboxError(Exception):
    """Base class of every error this package raises."""


class SandboxUnavailable(SandboxError):
    """The host cannot run sandboxes; the message names the package or sysctl to fix it."""


class SandboxSetupError(SandboxError):
    """The spec is invalid or asks for something unsupported; nothing was spawned."""
