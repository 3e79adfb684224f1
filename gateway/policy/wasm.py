"""The wasm policy engine: the bundle compiled to WebAssembly by OPA's own compiler
(``opa build -t wasm``), evaluated in this process by wasmtime.

Why: on the decision fixture table, rego-cpp takes about 1.4 ms a decision (its cheapest
inputs 0.5 ms; a 36 KB shell script 120 ms) and an OPA server about 1.2 ms over HTTP; the
compiled bundle decides the same inputs in about 0.07 ms (the shell script in 4 ms), with
OPA's semantics: the same compiler, and the built-ins of OPA's Wasm library (in C; regular
expressions with RE2's linear-time matcher). ``bench/policy.py`` prints the comparison.

Why in-process is safe here, where the rego-cpp engine needs worker processes (see
:mod:`gateway.policy.embedded`):

* a Wasm instance reads and writes only its own linear memory, which this engine creates
  with a maximum (``memory_bytes``); growing past it fails the evaluation;
* every evaluation has a deadline: wasmtime's epoch interruption traps the instance once
  the engine's epoch, advanced every :data:`TICK_S` by one ticker thread, passes the
  evaluation's deadline;
* the policy's built-ins run inside the module and the host provides none: a bundle that
  needs a host built-in (``sprintf``, ``regex.split``, ``http.send``...: OPA implements
  those in Go only) is refused at load, naming them;
* a trap (deadline, memory, ``opa_abort``, any fault) discards the instance: a new one is
  made from the compiled module, and that evaluation is a deny (5003).

The ABI is OPA's (https://www.openpolicyagent.org/docs/wasm, version 1.2 or later): the
data document is parsed into the instance once (``opa_json_parse``); each evaluation
writes the input JSON at the heap mark left after the data, calls ``opa_eval`` (which
resets the heap to just past the input, so nothing accumulates between evaluations) and
reads the NUL-terminated JSON result set ``[{"result": <decision>}]`` (``[]``: undefined).

Compiling needs the ``opa`` CLI (``policy.opa_binary``) at start and at each reload; the
bundle is written from the checked :class:`~gateway.policy.bundle.PolicySource` into a
private temporary directory, so what is compiled is exactly what was loaded.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import wasmtime

from gateway.errors import PolicyEngineError
from gateway.models import Decision
from gateway.policy.bundle import PolicySource
from gateway.policy.decisions import ENTRYPOINT, DecisionCache, decision_from_document

__all__ = ["TICK_S", "WasmEngine", "compile_wasm"]

TICK_S = 0.01  # the epoch ticker's period: deadlines are kept to within this, seconds
_COMPILE_TIMEOUT_S = 120.0
_PAGE = 65536  # bytes in a Wasm page
_MIN_ABI = (1, 2)  # opa_eval, the one-call evaluation


def compile_wasm(source: PolicySource, opa_binary: str, entrypoint: str = ENTRYPOINT,
                 timeout_s: float = _COMPILE_TIMEOUT_S) -> bytes:
    """``source`` compiled by ``opa build -t wasm -e <entrypoint>``: the ``policy.wasm``
    module's bytes.

    Raises:
        PolicyEngineError: no such ``opa`` binary, or it failed (its message is kept),
            timed out, or wrote no module.
    """
    binary = shutil.which(opa_binary)
    if binary is None:
        raise PolicyEngineError(
            f"the wasm engine compiles the bundle with the opa CLI, and {opa_binary!r} is not an executable "
            "(set policy.opa_binary, or use policy.engine 'embedded')")
    with tempfile.TemporaryDirectory(prefix="mcp-policy-wasm-") as tmp:
        bundle = Path(tmp) / "bundle"
        for rel, text in source.modules:
            path = bundle / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (bundle / "data.json").write_text(json.dumps(source.data))
        out = Path(tmp) / "bundle.tar.gz"
        try:
            built = subprocess.run([binary, "build", "-t", "wasm", "-e", entrypoint, "-o", str(out), str(bundle)],
                                   capture_output=True, text=True, timeout=timeout_s, env={"PATH": os.defpath})
        except subprocess.TimeoutExpired:
            raise PolicyEngineError(f"opa build did not finish within {timeout_s:.0f} s") from None
        except OSError as exc:
            raise PolicyEngineError(f"cannot run {binary}: {exc}") from exc
        if built.returncode != 0:
            detail = (built.stderr or built.stdout).strip().replace(str(bundle) + "/", "")
            raise PolicyEngineError(f"policy does not compile to wasm: {detail[-2000:]}")
        with tarfile.open(out) as archive:
            for member in archive.getmembers():
                if member.name.lstrip("/") == "policy.wasm" and member.isfile():
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        return extracted.read()
    raise PolicyEngineError("opa build wrote no policy.wasm")


class _Instance:
    """One instantiated module with the data document loaded: evaluations run one at a
    time on it. Made from :class:`WasmEngine`'s compiled module; thrown away after a trap."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, data: bytes, max_pages: int) -> None:
        self.store = wasmtime.Store(engine)
        self.memory = wasmtime.Memory(self.store, wasmtime.MemoryType(wasmtime.Limits(2, max_pages)))
        linker = wasmtime.Linker(engine)
        linker.define(self.store, "env", "memory", self.memory)
        i32 = wasmtime.ValType.i32()
        linker.define_func("env", "opa_abort", wasmtime.FuncType([i32], []), self._abort)
        for arity in range(5):  # the host implements no built-in (the engine refused any)
            linker.define_func("env", f"opa_builtin{arity}", wasmtime.FuncType([i32] * (arity + 2), [i32]),
                               _no_host_builtin)
        self.store.set_epoch_deadline(1 << 62)  # no deadline while it is set up
        exports = linker.instantiate(self.store, module).exports(self.store)
        self.abi = (exports["opa_wasm_abi_version"].value(self.store),
                    exports["opa_wasm_abi_minor_version"].value(self.store))
        self._eval = exports["opa_eval"]
        self._malloc = exports["opa_malloc"]
        data_addr = self._write_new(data)
        self._data = exports["opa_json_parse"](self.store, data_addr, len(data))
        if not self._data:
            raise PolicyEngineError("the bundle's data document does not parse in the wasm module")
        self._base = exports["opa_heap_ptr_get"](self.store)  # the input goes here, each time
        self.required_builtins = json.loads(self._string(exports["opa_json_dump"](self.store, exports["builtins"](
            self.store))))

    def _abort(self, addr: int) -> None:
        raise wasmtime.WasmtimeError(f"opa_abort: {self._string(addr)[:500].decode(errors='replace')}")

    def _string(self, addr: int) -> bytes:
        """The NUL-terminated string at ``addr`` in the instance's memory (never read past
        its end: a string without its NUL is a failed evaluation)."""
        size = self.memory.data_len(self.store)
        if not 0 < addr < size:
            raise wasmtime.WasmtimeError(f"the module returned address {addr}, outside its memory")
        base = ctypes.addressof(self.memory.data_ptr(self.store).contents)
        found = _memchr(base + addr, 0, size - addr)
        if not found:
            raise wasmtime.WasmtimeError("the module returned a string without its end")
        return ctypes.string_at(base + addr, found - (base + addr))

    def _write_new(self, raw: bytes) -> int:
        addr = self._malloc(self.store, len(raw))
        self.memory.write(self.store, raw, addr)
        return addr

    def evaluate(self, encoded: bytes, deadline_ticks: int) -> bytes:
        """The JSON result set for the input ``encoded``; a trap raises (the instance is
        then unusable)."""
        end = self._base + len(encoded)
        missing = end + _PAGE - self.memory.data_len(self.store)
        if missing > 0:
            self.memory.grow(self.store, -(-missing // _PAGE))  # WasmtimeError past the maximum
        self.memory.write(self.store, encoded, self._base)
        self.store.set_epoch_deadline(deadline_ticks)
        return self._string(self._eval(self.store, 0, 0, self._data, self._base, len(encoded), end, 0))


_memchr = ctypes.CDLL(None).memchr
_memchr.restype = ctypes.c_size_t  # the address found, 0 when none
_memchr.argtypes = (ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t)


def _no_host_builtin(*_: int) -> int:
    raise wasmtime.WasmtimeError("the policy called a built-in the wasm engine does not provide")


class WasmEngine:
    """The :class:`~gateway.policy.PolicyEngine` evaluating the OPA-compiled bundle with
    wasmtime, in this process (see the module docstring for why that is safe).

    Args:
        source: the checked policy bundle.
        opa_binary: the ``opa`` CLI that compiles it (a path, or a name on ``PATH``).
        max_input_bytes: cap on the JSON-encoded input, bytes.
        instances: instances of the module, i.e. evaluations that can run at once (wasmtime
            runs each without the GIL); others wait for one, up to ``timeout_s``.
        timeout_s: deadline of one evaluation, seconds (kept to within :data:`TICK_S`).
        cache_entries: decisions kept for equal inputs (see
            :class:`~gateway.policy.decisions.DecisionCache`); 0 = none.
        memory_bytes: the most linear memory one instance may have, bytes.

    Raises:
        PolicyEngineError: the bundle does not compile to wasm, needs a built-in the host
            does not provide, targets an older ABI, or its data does not load.
    """

    name = "wasm"

    def __init__(self, source: PolicySource, *, opa_binary: str = "opa", max_input_bytes: int = 64 * 1024,
                 instances: int = 2, timeout_s: float = 0.25, cache_entries: int = 0,
                 memory_bytes: int = 256 << 20) -> None:
        self.revision = source.revision
        self._timeout_s = timeout_s
        self._deadline_ticks = max(1, round(timeout_s / TICK_S)) + 1  # +1: the tick under way
        self._cache = DecisionCache(cache_entries, source, max_input_bytes)
        config = wasmtime.Config()
        config.epoch_interruption = True
        self._wasm = wasmtime.Engine(config)
        self._max_pages = max(2, memory_bytes // _PAGE)
        try:
            self._module = wasmtime.Module(self._wasm, compile_wasm(source, opa_binary))
        except wasmtime.WasmtimeError as exc:
            raise PolicyEngineError(f"opa's wasm module does not load: {exc}") from exc
        self._data = json.dumps(source.data, separators=(",", ":")).encode()
        self._idle: queue.SimpleQueue[_Instance] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._in_flight = 0  # evaluations under way: the ticker outlives close() until none is
        self.restarts = 0
        first = self._new_instance()
        if first.required_builtins:
            raise PolicyEngineError(
                "the wasm engine cannot evaluate the built-ins "
                f"{', '.join(sorted(first.required_builtins))}: OPA implements them in Go only, not in its Wasm "
                "library (rewrite those rules, or use policy.engine 'embedded' or 'opa')")
        self._idle.put(first)
        for _ in range(instances - 1):
            self._idle.put(self._new_instance())
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="policy-wasm-epoch", daemon=True)
        self._ticker.start()

    def _new_instance(self) -> _Instance:
        try:
            instance = _Instance(self._wasm, self._module, self._data, self._max_pages)
        except KeyError as exc:
            raise PolicyEngineError(f"opa's wasm module has no {exc.args[0]} (ABI 1.2 or later needed)") from None
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise PolicyEngineError(f"the wasm module does not instantiate: {exc}") from exc
        if instance.abi < _MIN_ABI:
            raise PolicyEngineError(f"opa's wasm module has ABI {instance.abi[0]}.{instance.abi[1]}; "
                                    f"{_MIN_ABI[0]}.{_MIN_ABI[1]} or later is needed (a newer opa)")
        return instance

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S) or self._in_flight:
            self._wasm.increment_epoch()

    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        """Evaluate ``data.mcp.decision`` for ``policy_input`` (design section 6).

        Raises:
            PolicyEngineError: input not JSON-encodable or over ``max_input_bytes``; no
                instance free within ``timeout_s``; the evaluation trapped (deadline,
                memory, abort); the decision is undefined or malformed.
        """
        if self._closed:
            raise PolicyEngineError("policy engine closed")
        return self._cache.decide(policy_input, self._evaluate)

    def _evaluate(self, encoded: bytes, start: float) -> Decision:
        try:
            instance = self._idle.get(timeout=self._timeout_s)
        except queue.Empty:
            raise PolicyEngineError(f"no policy instance free within {self._timeout_s * 1000:.0f} ms") from None
        with self._lock:
            self._in_flight += 1
        try:
            result = instance.evaluate(encoded, self._deadline_ticks)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self._replace()
            timed_out = isinstance(exc, wasmtime.Trap) and exc.trap_code == wasmtime.TrapCode.INTERRUPT
            raise PolicyEngineError(
                f"policy evaluation timed out after {self._timeout_s * 1000:.0f} ms" if timed_out
                else f"policy evaluation failed: {str(exc).splitlines()[0][:500]}") from None
        finally:
            with self._lock:
                self._in_flight -= 1
        self._idle.put(instance)
        eval_ms = (time.perf_counter() - start) * 1000
        try:
            results = json.loads(result)
        except ValueError as exc:
            raise PolicyEngineError(f"policy result is not JSON: {exc}") from exc
        if not results or not isinstance(results[0], dict):  # [] when undefined; [{"result": ...}]
            raise PolicyEngineError("policy decision data.mcp.decision is undefined")
        return decision_from_document(results[0].get("result"), revision=self.revision, eval_ms=eval_ms,
                                      engine=self.name)

    def _replace(self) -> None:
        """A trapped instance is dropped; a fresh one takes its place."""
        with self._lock:
            self.restarts += 1
        self._idle.put(self._new_instance())

    def health(self) -> tuple[bool, str]:
        """``(True, "ok")`` until :meth:`close`."""
        return (False, "engine closed") if self._closed else (True, "ok")

    def close(self, drain_timeout_s: float = 0.0) -> None:
        """Refuse further evaluations and stop the epoch ticker; evaluations under way
        finish (nothing they use is torn down; ``drain_timeout_s`` is not needed)."""
        self._closed = True
        self._stop.set()
