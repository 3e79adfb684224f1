"""The container image (issue 16): built by scripts/image.sh from Debian packages with
mmdebstrap and podman, then run with podman and runc as a pod would run it.

- hadolint is clean on Dockerfile.distroless;
- the image runs as uid 65532 with every capability dropped, no new privileges, a read-only
  root, the seccomp profile deploy/seccomp/mcp-gateway.json and an unmasked /proc, and a
  real ``echo`` runs in its sandbox through the published port;
- the root variant (uid per task) runs ``id`` as a sandbox uid;
- there is no shell and no package manager inside;
- without an unmasked /proc, or under the runtime's default seccomp profile, the gateway
  refuses to start with the error the README names;
- the labels are the OCI image spec's;
- the Falco plugin's image (for the chart's Falco sidecar) hands its library over with cp.

This machine's quirks (../shared/notes/deploy.md): ``--runtime runc`` (crun rejects its
hybrid cgroups) and explicit ``--ulimit``s (no CAP_SYS_RESOURCE to raise them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.auth.apikeys import hash_api_key, new_api_key
from tests.conftest import REPO, wait_final, wait_until
from tests.debian import apt_install
from tests.falco.plugin_build import OUT_DIR as FALCO_OUT
from tests.falco.plugin_build import go_binary

sys.path.insert(0, str(REPO / "scripts"))
import gen_seccomp  # noqa: E402

TAG = "localhost/mcp-gateway:test"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PROFILE = REPO / "deploy" / "seccomp" / "mcp-gateway.json"
RUNTIME_DEFAULT_PROFILE = Path("/usr/share/containers/seccomp.json")
QUIRKS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# What a pod's securityContext gives the non-root gateway (README "Container and Kubernetes").
POD = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
       "--security-opt", f"seccomp={PROFILE}", "--security-opt", "unmask=/proc/*"]
ROOT_VARIANT = ["--user", "0:0", "--cap-drop", "ALL", "--cap-add", "SYS_ADMIN,SETUID,SETGID,CHOWN,FOWNER,"
                "DAC_OVERRIDE,KILL,SETPCAP", "--security-opt", "no-new-privileges", "--read-only",
                "--security-opt", f"seccomp={PROFILE}", "--security-opt", "unmask=/proc/*",
                "--mount", "type=tmpfs,destination=/srv/workspaces,tmpfs-mode=0711",
                "--env", "MCP_GATEWAY_SANDBOX__WORKSPACE_ROOT=/srv/workspaces"]


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {out.returncode}: {out.stderr[-2000:]}")
    return out


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run([str(hadolint), str(REPO / "Dockerfile.distroless")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


@pytest.mark.skipif(not RUNTIME_DEFAULT_PROFILE.exists(), reason="no containers-common default profile here")
def test_the_seccomp_profile_is_the_runtime_default_plus_what_bwrap_needs() -> None:
    default = json.loads(RUNTIME_DEFAULT_PROFILE.read_text())
    assert json.loads(PROFILE.read_text()) == gen_seccomp.bwrap_profile(default), \
        "stale: run .venv/bin/python scripts/gen_seccomp.py"


@pytest.fixture(scope="module")
def image() -> str:
    missing = [tool for tool in ("podman", "mmdebstrap", "runc") if shutil.which(tool) is None]
    if missing:
        reason = apt_install("podman", "buildah", "runc", "mmdebstrap")
        if reason is not None:
            pytest.skip(f"cannot build the image here: {reason}")
    plugin = ["--falco-plugin"] if go_binary() is not None else []
    build = subprocess.run(["bash", str(REPO / "scripts" / "image.sh"), "--tag", TAG, *plugin], capture_output=True,
                           text=True, timeout=1200, cwd=REPO)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return TAG


@pytest.fixture(scope="module")
def api_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """An API key and a settings file that accepts it (plain HTTP behind a TLS-terminating
    proxy: the test talks to the published port)."""
    key = new_api_key()
    config = tmp_path_factory.mktemp("image") / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "host": "0.0.0.0", "http_port": 8080, "grpc_port": 8081, "state_dir": "/var/lib/mcp-gateway",
        "policy_dir": "/etc/mcp-gateway/policies", "log_format": "json", "tls": {"terminated_upstream": True},
        "auth": {"api_keys": [{"hash": hash_api_key(key), "principal": "ci", "tenant": "acme",
                               "scopes": ["tasks:execute", "tasks:read"]}]},
    }))
    config.chmod(0o644)  # read by uid 65532 in the container
    return key, config


class Container:
    """A detached container of the image, removed on exit."""

    def __init__(self, image: str, config: Path, *options: str) -> None:
        self.name = f"mcp-gateway-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.http: httpx.Client | None = None
        podman("run", "--detach", "--name", self.name, *QUIRKS, *options,
               "--volume", f"{config}:/etc/mcp-gateway/gateway.yaml:ro",
               "--mount", "type=tmpfs,destination=/var/lib/mcp-gateway,tmpfs-mode=0700,chown=true",
               "--tmpfs", "/tmp:rw,mode=1777", "--publish", "127.0.0.1::8080", image)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.http is not None:
            self.http.close()
        podman("rm", "--force", "--time", "5", self.name, check=False)

    def url(self) -> str:
        return "http://" + podman("port", self.name, "8080/tcp").stdout.strip()

    def exited(self) -> int | None:
        state = json.loads(podman("inspect", self.name).stdout)[0]["State"]
        return None if state["Running"] else state["ExitCode"]

    def logs(self) -> str:
        out = podman("logs", self.name)
        return out.stdout + out.stderr

    def wait_ready(self) -> httpx.Client:
        http = self.http = httpx.Client(base_url=self.url(), timeout=10)

        def ready() -> bool:
            if self.exited() is not None:
                raise AssertionError(f"the gateway exited {self.exited()}: {self.logs()[-3000:]}")
            try:
                return http.get("/health/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout_s=60, what="the gateway in the container ready")
        return http


def run_in_sandbox(http: httpx.Client, key: str, command: str, *args: str) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"}
    created = http.post("/v1/execute", json={"command": command, "args": list(args)}, headers=headers)
    assert created.status_code == 202, created.text
    return wait_final(lambda t: http.get(f"/v1/tasks/{t}", headers=headers).json(), created.json()["task_id"])


def test_the_image_runs_a_sandboxed_echo_as_a_non_root_user(image: str, api_key: tuple[str, Path]) -> None:
    key, config = api_key
    assert json.loads(podman("image", "inspect", image).stdout)[0]["Config"]["User"] == "65532:65532"
    with Container(image, config, *POD) as gw:
        http = gw.wait_ready()
        status = run_in_sandbox(http, key, "echo", "hello from the image")
        assert status["task_info"]["status"] == "COMPLETED", status
        assert status["result"]["stdout"] == "hello from the image\n"
        ready = http.get("/health/ready").json()
        assert ready["sandbox"]["uid_per_task"] is False
        # The gateway itself: uid 65532, no capabilities at all.
        proc_status = podman("exec", gw.name, "/usr/bin/python3", "-c",
                             "print(open('/proc/1/status').read())").stdout
        fields = dict(line.split(":\t", 1) for line in proc_status.splitlines() if ":\t" in line)
        assert fields["Uid"].split()[:2] == ["65532", "65532"] and int(fields["CapEff"], 16) == 0
        assert fields["NoNewPrivs"].strip() == "1"


def test_the_root_variant_gives_each_task_a_uid_of_its_own(image: str, api_key: tuple[str, Path]) -> None:
    key, config = api_key
    with Container(image, config, *ROOT_VARIANT) as gw:
        http = gw.wait_ready()
        assert http.get("/health/ready").json()["sandbox"]["uid_per_task"] is True
        status = run_in_sandbox(http, key, "id", "-u")
        assert status["task_info"]["status"] == "COMPLETED", status
        assert int(status["result"]["stdout"]) >= 60000  # a sandbox uid, not root, not 65532


def test_there_is_no_shell_and_no_package_manager(image: str, api_key: tuple[str, Path]) -> None:
    _, config = api_key
    with Container(image, config, *POD) as gw:
        gw.wait_ready()
        shell = podman("exec", gw.name, "/bin/sh", "-c", "true", check=False)
        assert shell.returncode != 0 and "no such file" in (shell.stdout + shell.stderr).lower()
        found = podman("exec", gw.name, "/usr/bin/python3", "-c", """
import os
names = {"sh", "bash", "dash", "ash", "zsh", "busybox", "apt", "apt-get", "dpkg", "rpm", "pip", "pip3"}
for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/opt/mcp-gateway/bin"):
    for name in sorted(set(os.listdir(d)) & names) if os.path.isdir(d) else ():
        print(os.path.join(d, name))
""").stdout.split()
        assert found == []


@pytest.mark.parametrize("missing, message", [
    ("unmask", "/proc is masked, as in a container by default"),
    ("seccomp", "the container's seccomp profile or AppArmor refuses what bwrap needs"),
])
def test_a_missing_pod_setting_stops_the_gateway_with_a_clear_error(
        image: str, api_key: tuple[str, Path], missing: str, message: str) -> None:
    _, config = api_key
    options = list(POD)
    at = options.index("unmask=/proc/*" if missing == "unmask" else f"seccomp={PROFILE}")
    del options[at - 1:at + 1]  # the option and its --security-opt
    with Container(image, config, *options) as gw:
        wait_until(lambda: gw.exited() is not None, timeout_s=60, what="the gateway to refuse to start")
        code = gw.exited()
        logs = gw.logs()
        assert code == 3 and "mcp-gateway: cannot start: cannot sandbox commands on this host" in logs, logs
        assert message in logs and "Traceback" not in logs, logs


def test_the_labels_follow_the_oci_image_spec(image: str) -> None:
    labels = json.loads(podman("image", "inspect", image).stdout)[0]["Labels"]
    prefix = "org.opencontainers.image."
    assert {f"{prefix}{k}" for k in ("title", "description", "version", "revision", "created", "licenses",
                                       "base.name")} <= set(labels)
    assert labels[f"{prefix}licenses"] == "Apache-2.0" and labels[f"{prefix}version"] == VERSION
    assert datetime.strptime(labels[f"{prefix}created"], "%Y-%m-%dT%H:%M:%SZ").year >= 2026
    assert labels[f"{prefix}revision"] != "unknown"  # the commit it was built from


def test_the_falco_plugin_image_hands_its_library_over(image: str, tmp_path: Path) -> None:
    if go_binary() is None:
        pytest.skip("no Go toolchain: the plugin image is not built")
    plugin_image = f"localhost/mcp-gateway-falco-plugin:{VERSION}"
    target = tmp_path / "plugins"
    target.mkdir()
    os.chown(target, 65532, 65532)
    # What the chart's init container runs, as the pod's user, every capability dropped.
    podman("run", "--rm", *QUIRKS, "--cap-drop", "ALL", "--read-only", "--volume", f"{target}:/target",
           "--entrypoint", "/bin/cp", plugin_image, "/plugins/libmcp_audit.so", "/target/libmcp_audit.so")
    copied = target / "libmcp_audit.so"
    assert copied.read_bytes() == (FALCO_OUT / "libmcp_audit.so").read_bytes()
    assert copied.read_bytes()[:4] == b"\x7fELF" and copied.stat().st_uid == 65532
