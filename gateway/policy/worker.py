"""The policy worker process: one rego-cpp interpreter, evaluating one input at a time.

Started by :class:`~gateway.policy.embedded.EmbeddedEngine` as
``python -m gateway.policy.worker``; it speaks frames on stdin/stdout and nothing else.
Why a process: rego-cpp's regular expressions backtrack (``regex.match("^(a+)+$", s)``
on 28 characters runs for 15 s) and some inputs abort the interpreter, so an evaluation
must be killable and must not take the gateway with it. The gateway kills a worker that
overruns its deadline or dies, and starts a fresh one.

Frame: 1 byte kind, 4 bytes big-endian payload length, payload.

* ``S`` (gateway -> worker, first frame): JSON ``{"modules": [[path, source], ...],
  "data": {...}, "entrypoint": "mcp/decision"}``; answered ``K`` (compiled) or ``E``.
* ``I``: the input document as JSON text; answered ``R`` (rego-cpp's result text,
  ``{"expressions":[<decision>]}``, parsed by the gateway), ``U`` (undefined) or ``E``
  (UTF-8 error text).

The worker exits on end of input, and with the gateway (PR_SET_PDEATHSIG). Its memory is
not capped by an rlimit: rego-cpp's allocator reserves 256 GiB of address space at load
(VmSize and VmData both), so RLIMIT_AS or RLIMIT_DATA below that makes its later
allocations fail at random (an evaluation failing with an empty message). What bounds a
runaway evaluation is the input cap and the deadline, after which the worker is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from gateway.policy.frames import read_frame, write_frame

__all__ = ["main"]

def main(argv: list[str] | None = None) -> int:
    """Serve frames on stdin/stdout until end of input; exit status 0, or 1 on a bad start."""
    args = argparse.ArgumentParser(prog="gateway.policy.worker")
    args.add_argument("--parent", type=int, default=0, help="pid that must stay our parent")
    opts = args.parse_args(argv)
    import prctl  # python-prctl

    prctl.set_pdeathsig(signal.SIGKILL)
    if opts.parent and os.getppid() != opts.parent:
        return 1  # the gateway died before the death signal was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the gateway, which stops us

    from gateway.errors import PolicyEngineError
    from gateway.policy.bundle import PolicySource
    from gateway.policy.embedded import Evaluator

    rfd, wfd = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        kind, payload = read_frame(rfd)
        if kind != b"S":
            raise ValueError(f"first frame is {kind!r}, not S")
        spec = json.loads(payload)
        source = PolicySource(tuple((m[0], m[1]) for m in spec["modules"]), spec["data"], "")
        evaluator = Evaluator(source, [spec["entrypoint"]])
    except (EOFError, ValueError, KeyError, TypeError, PolicyEngineError) as exc:
        _try_write(wfd, b"E", str(exc).encode())
        return 1
    write_frame(wfd, b"K", b"")
    while True:
        try:
            kind, payload = read_frame(rfd)
        except EOFError:
            return 0
        if kind != b"I":
            write_frame(wfd, b"E", f"unknown frame kind {kind!r}".encode())
            continue
        try:
            result = evaluator.evaluate_json(payload.decode("utf-8"))
        except PolicyEngineError as exc:
            write_frame(wfd, b"E", exc.message.encode("utf-8", "replace"))
        except (UnicodeDecodeError, MemoryError) as exc:
            write_frame(wfd, b"E", f"policy evaluation failed: {exc}".encode())
        else:
            if result is None:
                write_frame(wfd, b"U", b"")
            else:
                write_frame(wfd, b"R", result.encode("utf-8", "surrogateescape"))


def _try_write(fd: int, kind: bytes, payload: bytes) -> None:
    try:
        write_frame(fd, kind, payload)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
