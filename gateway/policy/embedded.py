"""The embedded policy engine: Rego evaluated by regopy (rego-cpp) in worker processes.

Prepare once, evaluate many (style rule 3): :class:`EmbeddedEngine` reads the policy
bundle once and starts a small pool of worker processes (``gateway.policy.worker``), each
compiling it once into a rego-cpp bundle with the single entry point ``mcp/decision``
and keeping one interpreter. Each :meth:`EmbeddedEngine.evaluate` sends the JSON input
to a free worker and waits for the decision document, with a deadline.

Why processes and not threads: rego-cpp's regular expressions backtrack (a pattern like
``^(a+)+$`` on 28 characters of attacker-controlled text runs for 15 s), and an
interpreter fault would take the whole gateway down. A worker that overruns the deadline
or dies is killed and replaced; that evaluation is a deny (5003), never a hang or a
crash. The cost is one pipe round trip (tens of microseconds) per decision.

An engine instance never changes: a reload builds a new engine (new workers, new
compile) and swaps it in; :meth:`EmbeddedEngine.close` stops the old one's workers once
their evaluations finish.

rego-cpp 1.5 limits found while writing ``policies/`` (the shipped policy avoids them;
the parity test against OPA catches any it does not):

* ``with input as {...}`` aborts the process; :func:`load_policy_dir` refuses it outside
  tests, and the unit-test driver (``gateway.policy.rego_tests``) runs such tests itself.
* Strings handed over as Python objects (``regopy.Input``) keep backslashes unescaped, so
  built-ins see different text than OPA would (``c\\url`` did not match ``\\``); the
  input is therefore always passed as JSON text (``set_input_term``).
* ``some k, v in x`` inside a comprehension does not compile; a function argument used
  as a key inside a comprehension is ignored (``{r | roles[r].n[arg]}`` lists every
  role); ``sort()`` of a set cannot be indexed or compared with an array literal;
  ``regex`` ``\\s`` does not match a newline.
* ``replace(s, "", x)`` never returns; ``sprintf("%s", [s])`` emits some built-in
  results with their JSON quotes (a corrupt document surfaces here as a
  ``PolicyEngineError``, never as a wrong decision).

Every failure is a :class:`~gateway.errors.PolicyEngineError` (fail closed, code 5003).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from regopy import Bundle, Interpreter, LogLevel, RegoError
from regopy.rego_shared import (
    rego_bundle_query_entrypoint,
    rego_free_output,
    rego_output_ok,
    rego_output_string,
)

from gateway.errors import PolicyEngineError
from gateway.models import Decision
from gateway.policy.bundle import PolicySource, load_policy_dir
from gateway.policy.decisions import ENTRYPOINT, DecisionCache, decision_from_document
from gateway.policy.frames import MAX_FRAME_BYTES, write_frame

__all__ = [
    "EmbeddedEngine",
    "Evaluator",
    "compile_bundle",
    "result_value",
]

log = logging.getLogger("gateway.policy")



class Evaluator:
    """One compiled bundle and one interpreter, in this process (the worker's core, and
    the "bare engine call" the benchmark compares the gateway against).

    Args:
        source: the policy bundle.
        entrypoints: ``pkg/rule`` paths that may be evaluated; the first is the default.

    Raises:
        PolicyEngineError: the policy does not compile.
    """

    def __init__(self, source: PolicySource, entrypoints: Iterable[str] = (ENTRYPOINT,)) -> None:
        self._entrypoints = list(entrypoints)
        self._bundle = compile_bundle(source, self._entrypoints)
        self._interpreter = Interpreter()
        self._interpreter.strict_built_in_errors = True

    def evaluate_json(self, input_json: str, entrypoint: str | None = None) -> str | None:
        """The result of ``entrypoint`` (default: the first) for the input document
        ``input_json`` (JSON text): rego-cpp's result text (``{"expressions":[<value>]}``,
        see :func:`result_value`), or None when it is undefined. The text is passed on
        unparsed: the worker sends it to the gateway as it is.

        Raises:
            PolicyEngineError: the input is not JSON or the interpreter failed.
        """
        try:
            self._interpreter.set_input_term(input_json)
            output = rego_bundle_query_entrypoint(
                self._interpreter._impl, self._bundle._impl, entrypoint or self._entrypoints[0]
            )
            try:
                ok, text = rego_output_ok(output), rego_output_string(output)
            finally:
                rego_free_output(output)
        except (RegoError, ValueError, TypeError, OverflowError) as exc:
            raise PolicyEngineError(f"policy evaluation failed: {exc}") from exc
        if not ok:
            raise PolicyEngineError(f"policy evaluation failed: {text.strip()[:500]}")
        return None if text == "undefined" else text


def result_value(text: str) -> Any:
    """The value in rego-cpp's result text ``{"expressions":[<value>], ...}``.

    Raises:
        PolicyEngineError: the text is not JSON of that shape (rego-cpp 1.5 can emit an
            invalid document, e.g. from ``sprintf("%s", ...)``).
    """
    try:
        result = json.loads(text)
        if isinstance(result, list):  # several results: the first, as regopy reads it
            result = result[0]
        return result["expressions"][0]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise PolicyEngineError(f"policy result is not a JSON document: {exc}") from exc


class EmbeddedEngine:
    """The :class:`~gateway.policy.PolicyEngine` running Rego in a pool of worker processes.

    Args:
        policy: an OPA-layout bundle directory (``policies/``) or an already loaded
            :class:`PolicySource`.
        max_input_bytes: cap on the JSON-encoded input, bytes, checked before evaluation
            so a huge request never reaches the interpreter.
        workers: worker processes, i.e. evaluations that can run at once (others wait
            for a free worker, up to ``timeout_s``).
        timeout_s: deadline of one evaluation, seconds, from the moment a worker has
            it; a worker that overruns it is killed. Waiting for a free worker has the
            same limit, so a call returns within twice this.
        cache_entries: size of the decision cache (LRU), 0 for none. It is used only
            when the bundle cannot read ``input.context`` (:func:`ignores_context`): a
            decision is then a function of the rest of the input and this bundle, so
            equal inputs reuse it (each use gets its own decision id). Errors are never
            cached, and a reload starts a new engine with an empty cache.

    Raises:
        PolicyEngineError: the policy cannot be loaded, does not compile, or the first
            worker cannot be started.
    """

    name = "embedded"

    def __init__(
        self,
        policy: Path | str | PolicySource,
        *,
        max_input_bytes: int = 64 * 1024,
        workers: int = 2,
        timeout_s: float = 0.25,
        cache_entries: int = 0,
    ) -> None:
        self._source = policy if isinstance(policy, PolicySource) else load_policy_dir(Path(policy))
        self.revision = self._source.revision
        self._cache = DecisionCache(cache_entries, self._source, max_input_bytes)
        self._max_input_bytes = max_input_bytes
        self._timeout_s = timeout_s
        self._argv = [sys.executable, "-m", "gateway.policy.worker", f"--parent={os.getpid()}"]
        self._start_frame = json.dumps(
            {"modules": self._source.modules, "data": self._source.data, "entrypoint": ENTRYPOINT},
            separators=(",", ":"),
        ).encode()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._busy = 0
        self._closed = False
        self.restarts = 0
        # Every worker is started from this one long-lived thread: PR_SET_PDEATHSIG fires
        # when the *thread* that forked the worker ends, so a short-lived thread would take
        # its workers with it. Shutting the thread down (close) stops them all.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="policy-spawner")
        try:
            # The first worker starts here, so a bundle that does not compile fails the load.
            for _ in range(workers):
                self._idle.put(self._spawner.submit(self._start_worker).result())
        except BaseException:
            self.close(drain_timeout_s=0)
            raise

    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        """Evaluate ``data.mcp.decision`` for ``policy_input`` (design section 6).

        Returns:
            the decision; ``sandbox`` is None on a deny.

        Raises:
            PolicyEngineError: input not JSON-encodable or over ``max_input_bytes``; no
                worker free or no answer within ``timeout_s``; the worker died; the
                interpreter failed (built-in errors are strict); the decision is
                undefined or malformed.
        """
        return self._cache.decide(policy_input, self._evaluate)

    def _evaluate(self, encoded: bytes, start: float) -> Decision:
        try:
            worker = self._idle.get(timeout=self._timeout_s)
        except queue.Empty:
            raise PolicyEngineError(
                f"no policy worker free within {self._timeout_s * 1000:.0f} ms"
            ) from None
        with self._lock:
            self._busy += 1
        try:
            # The deadline starts when the worker has the input: time spent queueing for
            # a worker never counts against (and never kills) a healthy one.
            kind, payload = worker.call(b"I", encoded, time.perf_counter() + self._timeout_s)
        except PolicyEngineError:
            self._replace(worker)
            raise
        finally:
            with self._lock:
                self._busy -= 1
                self._lock.notify_all()
        self._give_back(worker)
        eval_ms = (time.perf_counter() - start) * 1000
        if kind == b"E":
            raise PolicyEngineError(payload.decode("utf-8", "replace"))
        if kind == b"U":
            raise PolicyEngineError("policy decision data.mcp.decision is undefined")
        return decision_from_document(result_value(payload.decode("utf-8", "replace")),
                                      revision=self.revision, eval_ms=eval_ms)

    def health(self) -> tuple[bool, str]:
        """``(True, "ok")`` until :meth:`close`; a dead worker is replaced, not reported."""
        with self._lock:
            return (False, "engine closed") if self._closed else (True, "ok")

    def close(self, drain_timeout_s: float = 5.0) -> None:
        """Stop every worker, after waiting up to ``drain_timeout_s`` seconds for the
        evaluations under way (a reload closes the old engine this way)."""
        with self._lock:
            self._closed = True
            self._lock.wait_for(lambda: self._busy == 0, timeout=drain_timeout_s)
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break
        self._spawner.shutdown(wait=False, cancel_futures=True)

    # -- pool ------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        worker = _Worker(self._argv)
        try:
            kind, payload = worker.call(b"S", self._start_frame, time.perf_counter() + _START_TIMEOUT_S)
        except PolicyEngineError as exc:
            worker.kill()
            raise PolicyEngineError(f"policy worker did not start: {exc.message}") from exc
        if kind != b"K":
            worker.kill()
            raise PolicyEngineError(payload.decode("utf-8", "replace") or "policy worker refused the bundle")
        return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            worker.kill()
        else:
            self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start its replacement in the background (the caller has
        already failed; the next callers wait for a free worker as usual)."""
        worker.kill()
        with self._lock:
            if self._closed:
                return
            self.restarts += 1
            self._spawner.submit(self._respawn)

    def _respawn(self) -> None:
        delay = 0.05
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                self._give_back(self._start_worker())
                return
            except PolicyEngineError as exc:
                log.error("policy worker restart failed, retrying in %.1f s: %s", delay, exc.message)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


_START_TIMEOUT_S = 30.0


class _Worker:
    """One worker process and its pipes; used by one thread at a time."""

    def __init__(self, argv: list[str]) -> None:
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            raise PolicyEngineError(f"cannot start a policy worker: {exc}") from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._wfd, self._rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self._poll = select.poll()
        self._poll.register(self._rfd, select.POLLIN)

    def call(self, kind: bytes, payload: bytes, deadline: float) -> tuple[bytes, bytes]:
        """Send one frame and read the answer by ``deadline`` (``time.perf_counter``).

        Raises:
            PolicyEngineError: timed out, or the worker died or broke the protocol.
        """
        try:
            write_frame(self._wfd, kind, payload)
            header = self._read(5, deadline)
            size = int.from_bytes(header[1:], "big")
            if size > MAX_FRAME_BYTES:
                raise PolicyEngineError(f"policy worker sent a {size} byte frame")
            return header[:1], self._read(size, deadline)
        except OSError as exc:
            raise PolicyEngineError(f"policy worker failed: {exc.strerror or exc}") from exc
        except EOFError:
            raise PolicyEngineError(f"policy worker died ({self._exit_text()})") from None

    def _read(self, size: int, deadline: float) -> bytes:
        chunks, left = [], size
        while left:
            wait_ms = (deadline - time.perf_counter()) * 1000
            if wait_ms <= 0 or not self._poll.poll(wait_ms):
                raise PolicyEngineError("policy evaluation timed out; the worker was stopped")
            chunk = os.read(self._rfd, left)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _exit_text(self) -> str:
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "closed its pipe"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def kill(self) -> None:
        """SIGKILL the process and reap it; idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


# ---- helpers -------------------------------------------------------------------------


def compile_bundle(source: PolicySource, entrypoints: Iterable[str]) -> Bundle:
    """A rego-cpp bundle of ``source`` with plans for ``entrypoints`` (``pkg/rule`` paths).

    Raises:
        PolicyEngineError: the modules do not compile.
    """
    builder = Interpreter()
    builder.log_level = LogLevel.NONE  # errors are raised to us; keep stderr clean
    try:
        for rel, text in source.modules:
            builder.add_module(rel, text)
        builder.add_data(source.data)
        bundle = builder.build(None, list(entrypoints))
    except RegoError as exc:
        raise PolicyEngineError(f"policy does not compile: {exc}") from exc
    if not bundle.ok():
        raise PolicyEngineError("policy does not compile (rego-cpp returned no bundle)")
    return bundle
