"""Write deploy/seccomp/mcp-gateway.json: a container runtime's default seccomp profile plus
what bubblewrap needs to build a sandbox inside the container, for the gateway's container
or pod (Kubernetes ``seccompProfile: {type: Localhost, localhostProfile: ...}``).

    .venv/bin/python scripts/gen_seccomp.py [--default /usr/share/containers/seccomp.json] [--out PATH]

The base is the default profile of containers-common (podman, CRI-O; the same format as
Docker's and containerd's, github.com/moby/profiles). Default profiles allow some of the
calls bwrap makes to set up a sandbox only with CAP_SYS_ADMIN or CAP_SYS_CHROOT
(containers-common's: setns, sethostname, chroot; moby's also clone and unshare with
namespace flags, mount, umount2, pivot_root). The gateway runs with every capability
dropped, so this profile allows exactly those calls (:data:`BWRAP_CALLS`) unconditionally:
the sandbox's own seccomp filter (sandbox/seccomp.py) then refuses them to the task inside.
Every other rule of the base is kept as it is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: The calls bwrap makes that a default profile conditions on a capability or refuses.
BWRAP_CALLS = ("chroot", "clone", "mount", "pivot_root", "sethostname", "setns", "umount2", "unshare")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "deploy" / "seccomp" / "mcp-gateway.json"


def bwrap_profile(default: dict[str, Any]) -> dict[str, Any]:
    """``default`` (an OCI/Docker-format seccomp profile: ``defaultAction``, ``syscalls``
    rules with ``names``, ``action``, ``args``, ``includes``/``excludes``) with
    :data:`BWRAP_CALLS` taken out of every other rule and allowed by one rule of their own."""
    rules = []
    for rule in default["syscalls"]:
        names = [name for name in rule["names"] if name not in BWRAP_CALLS]
        if names:
            rules.append({**rule, "names": names})
    rules.append({"names": list(BWRAP_CALLS), "action": "SCMP_ACT_ALLOW",
                  "comment": "bubblewrap builds each task's sandbox (namespaces, mounts) without capabilities"})
    return {**default, "syscalls": rules}


def main() -> None:
    """Read the default profile, write the gateway's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default", type=Path, default=Path("/usr/share/containers/seccomp.json"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    profile = bwrap_profile(json.loads(args.default.read_text()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(profile, indent=1) + "\n")


if __name__ == "__main__":
    main()
