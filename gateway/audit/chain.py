"""The hash chain of the audit trail (design section 11).

Every event carries ``seq`` (from 1), ``prev_hash`` (the ``hash`` of the event before it;
:data:`GENESIS_HASH` for the first) and ``hash = sha256(canonical_json(event without
"hash"))``, where canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``: the form that is hashed and written. Editing, deleting, inserting
or reordering a line breaks the chain; re-chaining a whole file is caught only by the
signed checkpoints (:mod:`gateway.audit.signing`, :mod:`gateway.audit.verify`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["GENESIS_HASH", "canonical_json", "event_hash", "verify_chain"]

GENESIS_HASH = "0" * 64


def canonical_json(event: dict[str, Any]) -> str:
    """Sorted-key, compact, ASCII JSON: the form that is hashed, signed and written."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def event_hash(event: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``event`` without its ``hash`` key."""
    body = {k: v for k, v in event.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def verify_chain(events: Iterable[dict[str, Any]]) -> int:
    """Check ``seq``/``prev_hash``/``hash`` across consecutive events (no signatures: see
    :func:`gateway.audit.verify.verify_files` for the whole check).

    Returns:
        the number of events checked.

    Raises:
        ValueError: naming the first ``seq`` whose link or hash is wrong.
    """
    prev_hash, prev_seq, count = None, None, 0
    for event in events:
        if event.get("hash") != event_hash(event):
            raise ValueError(f"event seq={event.get('seq')} has a wrong hash")
        if prev_hash is not None and (event["prev_hash"] != prev_hash or event["seq"] != prev_seq + 1):
            raise ValueError(f"event seq={event.get('seq')} does not follow seq={prev_seq}")
        prev_hash, prev_seq = event["hash"], event["seq"]
        count += 1
    return count
