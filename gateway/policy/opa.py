"""The OPA server policy engine: ``data.mcp.decision`` asked of a real OPA over its REST API.

:class:`OpaEngine` sends one ``POST /v1/data/mcp/decision?provenance=true`` per request
and checks the returned document with the same strict
:func:`~gateway.policy.embedded.decision_from_document` as the embedded engine, so both
engines accept exactly the same decision shape. Every failure (OPA down, slow, answering
non-200 or non-JSON, an undefined or malformed decision) is a
:class:`~gateway.errors.PolicyEngineError` (5003, fail closed); nothing else escapes.

Deployment modes
----------------

1. **OPA loads the bundle itself** (``OpaEngine(url)``)::

       opa run -s -a 127.0.0.1:8181 -b policies/            # add --watch to reload on change

   OPA activates a (re)loaded bundle atomically, so a decision never sees half a bundle.
   The engine's ``revision`` is the ``.manifest`` revision as OPA reports it: read from
   ``GET /v1/data/system/bundles`` at construction (left ``""`` if OPA is not up yet) and
   from each answer's ``provenance.bundles.<name>.revision`` afterwards, so a ``--watch``
   reload shows up in the next decision. ``health()`` asks ``GET /health?bundles``, which
   is 200 only once every configured bundle is activated.

2. **Push mode** (``OpaEngine(url, source=load_policy_dir(...))``): OPA runs with no bundle
   (``opa run -s -a 127.0.0.1:8181``) and the gateway uploads its policy at start and on
   every reload with :meth:`OpaEngine.push`. The revision is the pushed
   ``source.revision``. ``health()`` asks plain ``GET /health`` (no bundle is configured)
   and is false after a failed push. OPA keeps pushed policy in memory only: when a
   restarted OPA answers "undefined", the engine pushes the last bundle again (at most
   once a second) and asks once more.

How a push is uploaded (checked against OPA 1.22.2): ``PUT /v1/data`` with the whole base
document, then ``PUT /v1/policies/gateway/<package path>`` with **one module per Rego
package**, then ``DELETE`` of every ``gateway/...`` policy id that is no longer part of
the source (found with ``GET /v1/policies``, so ids left by an earlier gateway process go
too). OPA compiles every ``PUT /v1/policies/<id>`` on its own against the modules already
loaded, so uploading the shipped ``policies/mcp/*.rego`` file by file fails whatever the
order: ``decision.rego`` uses ``program_allowed`` from ``commands.rego`` ("var
program_allowed is unsafe") and ``commands.rego`` uses ``set_text`` from ``decision.rego``
("undefined function set_text"). The modules of one package are therefore joined into
one module (one ``package`` line, the union of the ``import`` lines, each file's text
after it with its own ``package``/``import`` lines blanked so line numbers only shift),
and OPA's compile errors are mapped back to ``<file>:<line>`` of the original files.
Limit: a ``# METADATA`` block with ``scope: package`` loses its package line in the join.
An OPA that serves its own bundle refuses a push ("can't write to document root with
bundle roots configured"): the two modes do not mix on one OPA.

Why httpx and not opa-python-client (read: opa-python-client 3.0.0, ``opa_client/opa.py``)
----------------------------------------------------------------------------------------

* It is ``requests.Session`` + ``urllib3`` underneath, and its wheel also requires
  ``aiohttp`` and ``aiofiles`` even for the sync client: four new runtime dependencies for
  what is one POST here. ``requests.Session`` is not documented as thread-safe, and its
  ``HTTPAdapter`` is mounted with the default pool of 10 connections and no way to size
  it, so with ~32 worker threads the extra connections are opened and thrown away
  ("Connection pool is full, discarding connection") instead of kept alive.
* The timeout is one float for the whole client, fixed at construction (default 1.5 s),
  with no per-call override and no separate connect/read/pool budgets, and a
  ``urllib3.Retry(total=2, backoff_factor=0.3)`` is always mounted: connection errors
  are retried with back-off inside the call, so a 250 ms budget cannot be kept when OPA
  is down.
* ``query_rule`` returns the raw JSON (so ``decision_id`` and, through ``query_params``,
  provenance are reachable), which is all it adds over one POST; failures surface as
  ``requests`` exceptions (``raise_for_status()``) that would still need translating.
* Policy upload (``update_policy_from_string``) silently rewrites v0 syntax on a parse
  error ("rego_compat") and uploads one module per call, which cannot load mutually
  dependent modules (see above).

httpx gives one thread-safe ``Client`` with a sized keep-alive pool, per-phase timeouts
(connect/read/write/pool), typed exceptions (``ConnectError``, ``ReadTimeout``, ...) and
``trust_env=False`` so an ``HTTP_PROXY`` in the environment never routes policy traffic.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from gateway.errors import PolicyEngineError
from gateway.models import Decision
from gateway.policy.bundle import PolicySource
from gateway.policy.decisions import decision_from_document, encode_input

__all__ = ["DECISION_PATH", "POLICY_ID_PREFIX", "OpaEngine"]

#: The decision document, as an OPA Data API path.
DECISION_PATH = "mcp/decision"
#: Policy ids this engine owns on the OPA server (push mode): ``gateway/<package path>``.
POLICY_ID_PREFIX = "gateway/"

_POOL_SIZE = 32  # worker threads that may call evaluate at once
_KEEPALIVE_EXPIRY_S = 30.0
_PUSH_TIMEOUT_S = 10.0  # per push request: OPA compiles the whole policy on each PUT
_PUSH_WAIT_S = 5.0  # longest an evaluate waits for a push of this engine to finish
_REPUSH_INTERVAL_S = 1.0  # push mode: least time between re-pushes after an undefined answer
_ERROR_TEXT_MAX = 300

_PACKAGE_LINE = re.compile(r"^[ \t]*package[ \t]+([^\s#]+)")
_IMPORT_LINE = re.compile(r"^[ \t]*import[ \t]")
_COMMENT_OR_BLANK = re.compile(r"^[ \t]*(#.*)?$")


class OpaEngine:
    """The :class:`~gateway.policy.PolicyEngine` asking an OPA server over HTTP.

    Thread-safe: one ``httpx.Client`` (keep-alive pool of 32 connections) serves every
    thread. A :meth:`push` waits for running evaluations to finish and holds new ones
    back until it is done, so no decision of this engine sees half a push.

    Args:
        url: OPA's base URL, ``http://host:port`` (``https`` works too).
        timeout_s: budget of one evaluation, seconds, applied to each of connect, read,
            write and waiting for a pooled connection.
        max_input_bytes: cap on the JSON-encoded input, bytes, checked before sending.
        source: push mode: the bundle to upload now (see :meth:`push`). Without it, OPA
            is expected to have loaded ``policies/`` itself (``opa run -b``).

    Attributes:
        name: ``"opa"``.
        revision: push mode: the pushed ``source.revision``; otherwise the bundle
            revision OPA last reported (``""`` until known).

    Raises:
        PolicyEngineError: ``url`` is not an http(s) URL; push mode: the first push failed.
    """

    name = "opa"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.25,
        max_input_bytes: int = 64 * 1024,
        source: PolicySource | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PolicyEngineError(f"OPA url {url!r} is not an http(s)://host:port URL")
        self.url = url.rstrip("/")
        self.revision = ""
        self._timeout_s = timeout_s
        self._timeout_text = f"{timeout_s * 1000:.0f} ms"
        self._max_input_bytes = max_input_bytes
        self._decision_url = f"{self.url}/v1/data/{DECISION_PATH}?provenance=true"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=_POOL_SIZE,
                max_keepalive_connections=_POOL_SIZE,
                keepalive_expiry=_KEEPALIVE_EXPIRY_S,
            ),
            trust_env=False,
        )
        self._push_mode = source is not None
        self._bundle_name: str | None = None  # the bundle that owns data.mcp (bundle mode)
        self._push_failure: str | None = None  # set by a failed push: fail closed until the next
        self._source: PolicySource | None = None  # the last bundle pushed (push mode)
        self._last_repush = float("-inf")
        self._push_lock = threading.Lock()  # one push at a time
        self._gate = threading.Condition(threading.Lock())
        self._active = 0  # evaluations in flight
        self._pushing = False
        if source is not None:
            try:
                self.push(source)
            except BaseException:
                self._client.close()
                raise
        else:
            self._learn_bundle()

    # ---- evaluation ------------------------------------------------------------------

    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        """Ask OPA for ``data.mcp.decision`` with ``policy_input`` as ``input``.

        Returns:
            the decision, ``engine="opa"``, ``decision_id`` OPA's own when its decision
            log is on, ``revision`` from the answer's provenance (push mode: the pushed
            one), ``eval_ms`` the HTTP round trip in milliseconds.

        Raises:
            PolicyEngineError: input not JSON-encodable or over ``max_input_bytes``; OPA
                unreachable, slower than ``timeout_s``, answering non-200 or non-JSON; a
                failed push left OPA in an unknown state; the decision is undefined or
                malformed.
        """
        try:
            return self._evaluate(policy_input)
        except PolicyEngineError:
            raise
        except Exception as exc:  # never anything but PolicyEngineError (fail closed)
            raise PolicyEngineError(f"OPA at {self.url}: {type(exc).__name__}: {exc}") from exc

    def _evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        body = b'{"input":' + encode_input(policy_input, self._max_input_bytes) + b"}"
        self._enter()
        try:
            if self._push_failure is not None:
                raise PolicyEngineError(
                    f"no decision until a policy push succeeds; the last one failed: {self._push_failure}"
                )
            revision = self.revision
            start_ns = time.perf_counter_ns()
            try:
                response = self._client.post(
                    self._decision_url, content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from exc
            eval_ms = (time.perf_counter_ns() - start_ns) / 1e6
        finally:
            self._leave()
        if response.status_code != 200:
            raise PolicyEngineError(
                f"OPA at {self.url}: decision query answered {response.status_code}: {_opa_error(response)}"
            )
        document = self._json_object(response, "decision query")
        if "result" not in document:
            if self._repush_due():
                # OPA keeps pushed policy in memory only: a restarted OPA has none. Push
                # again (at most once a second) and ask once more.
                assert self._source is not None
                self.push(self._source)
                return self._evaluate(policy_input)
            raise PolicyEngineError(f"policy decision data.{DECISION_PATH.replace('/', '.')} is undefined")
        if not self._push_mode:
            revision = self._provenance_revision(document.get("provenance"), revision)
        decision_id = document.get("decision_id")
        return decision_from_document(
            document["result"],
            revision=revision,
            eval_ms=eval_ms,
            engine=self.name,
            decision_id=decision_id if isinstance(decision_id, str) and decision_id else None,
        )

    def _provenance_revision(self, provenance: Any, fallback: str) -> str:
        """The revision of the bundle that owns ``data.mcp`` in an answer's provenance.

        Also remembered as the engine's ``revision`` (a ``--watch`` reload shows up here).
        """
        bundles = provenance.get("bundles") if isinstance(provenance, dict) else None
        if not isinstance(bundles, dict) or not bundles:
            return fallback
        if self._bundle_name in bundles:
            revision = _bundle_revision(bundles[self._bundle_name])
        elif len(bundles) == 1:
            revision = _bundle_revision(next(iter(bundles.values())))
        else:
            revision = ",".join(f"{name}={_bundle_revision(b)}" for name, b in sorted(bundles.items()))
        self.revision = revision
        return revision

    def _learn_bundle(self) -> None:
        """Bundle mode: read the name and revision of the bundle owning ``data.mcp``.

        ``GET /v1/data/system/bundles`` answers ``{"result": {<name>: {"manifest":
        {"revision", "roots"}, "etag"}}}``. Best effort: OPA may not be up yet, in which
        case the first decision's provenance supplies the revision.
        """
        try:
            response = self._client.get(f"{self.url}/v1/data/system/bundles")
            bundles = response.json().get("result") if response.status_code == 200 else None
        except Exception:  # best effort, see above
            return
        if not isinstance(bundles, dict) or not bundles:
            return
        owners = [name for name, b in bundles.items() if _owns_decision(b)]
        name = owners[0] if len(owners) == 1 else next(iter(bundles)) if len(bundles) == 1 else None
        if name is not None:
            self._bundle_name = name
            entry = bundles[name]
            self.revision = _bundle_revision(entry.get("manifest") if isinstance(entry, dict) else None)

    # ---- health ------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """Whether OPA is up and serving the policy: ``(True, "ok")`` or ``(False, reason)``.

        Bundle mode asks ``GET /health?bundles`` (200 once the bundle is activated); push
        mode asks ``GET /health`` and is also false after a failed push. Never raises.
        """
        if self._push_failure is not None:
            return False, f"the last policy push failed: {self._push_failure}"
        path = "/health" if self._push_mode else "/health?bundles"
        try:
            response = self._client.get(self.url + path)
        except httpx.HTTPError as exc:
            return False, self._transport_error(exc).message
        except Exception as exc:  # health never raises
            return False, f"OPA at {self.url}: {type(exc).__name__}: {exc}"
        if response.status_code == 200:
            return True, "ok"
        return False, f"OPA at {self.url}: GET {path} answered {response.status_code}: {_body_text(response)}"

    # ---- push mode ---------------------------------------------------------------------

    def push(self, source: PolicySource) -> None:
        """Upload ``source`` to OPA (push mode) and make its revision the engine's.

        Calls, in order: ``PUT /v1/data`` (``source.data`` as the whole base document,
        204); ``PUT /v1/policies/gateway/<package path>`` (text/plain, one joined module
        per package, see the module docstring; 200); ``GET /v1/policies`` and ``DELETE
        /v1/policies/<id>`` of every ``gateway/...`` id not in this push. ``*_test.rego``
        modules are not pushed. Evaluations of this engine wait while a push runs.

        Raises:
            PolicyEngineError: OPA unreachable or refusing a step (the message carries
                OPA's compile errors as ``<file>:<line>``). OPA may then hold part of the
                new policy, so the engine refuses to decide (and ``health()`` is false)
                until a push succeeds.
        """
        modules = _package_modules(source)
        with self._push_lock:
            with self._gate:
                self._pushing = True
                while self._active:
                    self._gate.wait()
            try:
                self._upload(source, modules)
            except PolicyEngineError as exc:
                self._push_failure = exc.message
                raise
            except Exception as exc:
                self._push_failure = f"{type(exc).__name__}: {exc}"
                raise PolicyEngineError(f"OPA at {self.url}: push failed: {self._push_failure}") from exc
            else:
                self._push_mode = True
                self._push_failure = None
                self._source = source
                self.revision = source.revision
            finally:
                with self._gate:
                    self._pushing = False
                    self._gate.notify_all()

    def _upload(self, source: PolicySource, modules: dict[str, _JoinedModule]) -> None:
        timeout = httpx.Timeout(max(self._timeout_s, _PUSH_TIMEOUT_S))
        data = json.dumps(source.data, separators=(",", ":"), allow_nan=False).encode("utf-8")
        self._push_call("PUT", "/v1/data", 204, timeout, content=data,
                        headers={"Content-Type": "application/json"})
        for policy_id, module in modules.items():
            self._push_call("PUT", _policy_path(policy_id), 200, timeout, content=module.text.encode("utf-8"),
                            headers={"Content-Type": "text/plain"}, module=module)
        listing = self._push_call("GET", "/v1/policies", 200, timeout).get("result")
        if not isinstance(listing, list):
            raise PolicyEngineError(f"OPA at {self.url}: GET /v1/policies: no result list")
        stale = sorted(
            p["id"] for p in listing
            if isinstance(p, dict) and isinstance(p.get("id"), str)
            and p["id"].startswith(POLICY_ID_PREFIX) and p["id"] not in modules
        )
        for policy_id in stale:
            self._push_call("DELETE", _policy_path(policy_id), 200, timeout)

    def _push_call(
        self,
        method: str,
        path: str,
        expect: int,
        timeout: httpx.Timeout,
        *,
        module: _JoinedModule | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One push request; the JSON object answered (``{}`` for an empty body)."""
        try:
            response = self._client.request(method, self.url + path, timeout=timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, f"{method} {path}", timeout_s=timeout.read) from exc
        if response.status_code != expect:
            detail = _opa_error(response)
            if module is not None:
                detail = module.locate(detail)
            raise PolicyEngineError(
                f"OPA at {self.url}: {method} {path} answered {response.status_code}: {detail}"
            )
        if not response.content:
            return {}
        return self._json_object(response, f"{method} {path}")

    def _repush_due(self) -> bool:
        """Push mode, and no re-push in the last second (so a policy that really has no
        decision cannot make every request push)."""
        if not self._push_mode or self._source is None:
            return False
        with self._gate:
            now = time.monotonic()
            if now - self._last_repush < _REPUSH_INTERVAL_S:
                return False
            self._last_repush = now
            return True

    # ---- lifecycle and helpers ---------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP client and its pooled connections; evaluate fails afterwards."""
        self._client.close()

    def _enter(self) -> None:
        """Count an evaluation in; wait (up to 5 s) while a push of this engine runs."""
        with self._gate:
            if self._pushing and not self._gate.wait_for(lambda: not self._pushing, _PUSH_WAIT_S):
                raise PolicyEngineError(
                    f"OPA at {self.url}: a policy push has been running for over {_PUSH_WAIT_S:.0f} s"
                )
            self._active += 1

    def _leave(self) -> None:
        with self._gate:
            self._active -= 1
            if not self._active and self._pushing:
                self._gate.notify_all()

    def _transport_error(
        self, exc: httpx.HTTPError, what: str = "", *, timeout_s: float | None = None
    ) -> PolicyEngineError:
        """A short PolicyEngineError naming the URL and the cause of an httpx failure."""
        prefix = f"OPA at {self.url}: " + (f"{what}: " if what else "")
        budget = self._timeout_text if timeout_s is None else f"{timeout_s * 1000:.0f} ms"
        if isinstance(exc, httpx.PoolTimeout):
            cause = f"no free connection within {budget} ({_POOL_SIZE} in use)"
        elif isinstance(exc, httpx.ConnectTimeout):
            cause = f"connect timed out after {budget}"
        elif isinstance(exc, httpx.TimeoutException):
            cause = f"timed out after {budget}"
        elif isinstance(exc, httpx.ConnectError):
            cause = f"cannot connect ({_root_cause(exc)})"
        elif isinstance(exc, httpx.RemoteProtocolError):
            cause = f"connection lost ({_root_cause(exc)})"
        else:
            cause = f"{type(exc).__name__}: {_root_cause(exc)}"
        return PolicyEngineError(prefix + cause)

    def _json_object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        """The answer's body as a JSON object, else PolicyEngineError."""
        try:
            document = response.json()
        except ValueError as exc:
            raise PolicyEngineError(f"OPA at {self.url}: {what}: answer is not JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise PolicyEngineError(f"OPA at {self.url}: {what}: answer is not a JSON object")
        return document


# ---- joined modules (push mode) ------------------------------------------------------


class _JoinedModule:
    """All modules of one Rego package as one module, with a map back to the files.

    Attributes:
        policy_id: ``gateway/<package path>`` (dots of the package become slashes).
        text: the joined module: ``package`` line, union of the imports, then per file a
            ``# ---- <file>`` line and the file with its package/import lines blanked.
    """

    def __init__(self, package: str) -> None:
        self.policy_id = POLICY_ID_PREFIX + package.replace(".", "/")
        self._package = package
        self._imports: dict[str, None] = {}
        self._parts: list[tuple[str, list[str]]] = []

    def add(self, rel: str, lines: list[str], header_end: int) -> None:
        body = list(lines)
        for i in range(header_end):
            if _PACKAGE_LINE.match(body[i]):
                body[i] = ""
            elif _IMPORT_LINE.match(body[i]):
                self._imports[" ".join(body[i].split("#", 1)[0].split())] = None
                body[i] = ""
        self._parts.append((rel, body))

    @property
    def _header(self) -> list[str]:
        return [f"package {self._package}", *self._imports]

    @property
    def text(self) -> str:
        out = self._header
        for rel, body in self._parts:
            out = [*out, f"# ---- {rel}", *body]
        return "\n".join(out) + "\n"

    def where(self, row: int) -> str:
        """``<file>:<line>`` of line ``row`` (1-based) of the joined text."""
        first = len(self._header) + 1  # row of the first "# ---- <file>" line
        if row < first:
            return f"{self.policy_id}:{row} (joined header: package/imports)"
        for rel, body in self._parts:
            if row <= first + len(body):
                return f"{rel}:{max(row - first, 1)}"
            first += len(body) + 1
        return f"{self.policy_id}:{row}"

    def locate(self, text: str) -> str:
        """``text`` with every ``<policy id>:<row>`` rewritten as ``<file>:<line>``."""
        return re.sub(re.escape(self.policy_id) + r":(\d+)", lambda m: self.where(int(m.group(1))), text)


def _package_modules(source: PolicySource) -> dict[str, _JoinedModule]:
    """The non-test modules of ``source`` joined per package, by policy id.

    Raises:
        PolicyEngineError: a module has no ``package`` line.
    """
    joined: dict[str, _JoinedModule] = {}
    for rel, text in source.modules:
        if rel.endswith("_test.rego"):
            continue
        lines = text.splitlines()
        package, header_end = None, len(lines)
        for i, line in enumerate(lines):
            match = _PACKAGE_LINE.match(line)
            if package is None and match:
                package = match.group(1)
            elif not (_COMMENT_OR_BLANK.match(line) or (package and _IMPORT_LINE.match(line))):
                header_end = i
                break
        if package is None:
            raise PolicyEngineError(f"{rel}: no package line before the first rule")
        module = joined.setdefault(package, _JoinedModule(package))
        module.add(rel, lines, header_end)
    return {m.policy_id: m for m in joined.values()}


# ---- small helpers -------------------------------------------------------------------


def _policy_path(policy_id: str) -> str:
    return "/v1/policies/" + quote(policy_id, safe="/")


def _owns_decision(bundle: Any) -> bool:
    """Whether a ``data.system.bundles`` entry's roots cover ``data.mcp.decision``."""
    manifest = bundle.get("manifest") if isinstance(bundle, dict) else None
    roots = manifest.get("roots") if isinstance(manifest, dict) else None
    if not isinstance(roots, list):
        return False
    return any(
        isinstance(r, str) and (r == "" or r == DECISION_PATH or DECISION_PATH.startswith(r.rstrip("/") + "/"))
        for r in roots
    )


def _bundle_revision(entry: Any) -> str:
    revision = entry.get("revision") if isinstance(entry, dict) else None
    return revision if isinstance(revision, str) else ""


def _root_cause(exc: BaseException) -> str:
    """The innermost message of an exception chain (``[Errno 111] Connection refused``)."""
    for _ in range(10):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return str(exc) or type(exc).__name__


def _body_text(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_ERROR_TEXT_MAX] + ("..." if len(text) > _ERROR_TEXT_MAX else "")


def _opa_error(response: httpx.Response) -> str:
    """OPA's error body (``{"code", "message", "errors": [...]}``) as one line."""
    try:
        body = response.json()
    except ValueError:
        return _body_text(response) or "(empty body)"
    if not isinstance(body, dict) or "message" not in body:
        return _body_text(response)
    parts = [f"{body.get('code', 'error')}: {body['message']}"]
    for error in body.get("errors") or []:
        if not isinstance(error, dict):
            continue
        loc = error.get("location") or {}
        at = f"{loc.get('file', '?')}:{loc.get('row', '?')}: " if isinstance(loc, dict) and loc else ""
        parts.append(f"{at}{error.get('code', '')}: {error.get('message', '')}")
    return "; ".join(parts)
