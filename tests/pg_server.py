"""A real, throwaway PostgreSQL server for the tests, and a fresh database per test.

``postgres_server`` (session) finds the server binaries (``initdb`` on PATH or the newest
``/usr/lib/postgresql/*/bin``), installs Debian's ``postgresql`` with apt-get when they are
missing and we are root, initialises a cluster in a temp dir and runs ``postgres`` on a free
127.0.0.1 port until the session ends. PostgreSQL refuses to run as root, so as root the
cluster belongs to the ``postgres`` system user (created when missing). When no server can
be had, the tests that need one are skipped with the reason; nothing is left running.

``postgres_dsn`` (function) yields ``postgresql://gw:<password>@127.0.0.1:<port>/<db>`` for a
database created for the test and dropped (``WITH (FORCE)``) after it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.debian import find_or_install
from tests.procs import as_user, free_port

_SUPERUSER = "gw"
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PostgresServer:
    """A running test server: ``dsn(dbname)`` builds a password DSN to one of its databases."""

    host: str
    port: int
    user: str
    password: str

    def dsn(self, dbname: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A server for the block (the fixture's, for bench scripts too); skips (pytest's
    Skipped) when none can be had."""
    bindir = find_or_install("postgresql", _find_bindir,
                             "PostgreSQL tests need initdb (on PATH or /usr/lib/postgresql/*/bin)")
    run_as = _unprivileged_user() if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="mcp-pg-", dir="/tmp"))
    if run_as is not None:
        os.chown(root, run_as.pw_uid, run_as.pw_gid)
    server = PostgresServer("127.0.0.1", free_port(), _SUPERUSER, secrets.token_urlsafe(16))
    log_path = root / "postgres.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(server.password + "\n")
        if run_as is not None:
            os.chown(pwfile, run_as.pw_uid, run_as.pw_gid)
        _run_as(run_as, [str(bindir / "initdb"), "-D", str(root / "data"), "-U", server.user,
                         f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                         "--encoding=UTF8", "--no-sync"], cwd=root)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*_prefix(run_as), str(bindir / "postgres"), "-D", str(root / "data"), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"port={server.port}", "-c", f"unix_socket_directories={root}", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                cwd=root, stdout=log, stderr=subprocess.STDOUT,
            )
        _wait_ready(server, proc, log_path)
        yield server
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # SIGINT: fast shutdown (postgres(1), "Signals")
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    dbname = "test_" + secrets.token_hex(8)
    with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {dbname}")
    try:
        yield postgres_server.dsn(dbname)
    finally:
        with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def _find_bindir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _unprivileged_user() -> pwd.struct_passwd:
    """The ``postgres`` system user, created (``useradd --system``) when it does not exist."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                       check=True, capture_output=True, timeout=30)
        return pwd.getpwnam("postgres")


def _prefix(user: pwd.struct_passwd | None) -> list[str]:
    """Run as ``user`` (through setpriv: never Popen(user=), see tests.procs.as_user)."""
    return [] if user is None else as_user(user.pw_uid, user.pw_gid)


def _run_as(user: pwd.struct_passwd | None, argv: list[str], cwd: Path) -> None:
    out = subprocess.run([*_prefix(user), *argv], cwd=cwd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {out.returncode}): {out.stderr or out.stdout}")


def _wait_ready(server: PostgresServer, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            psycopg.connect(server.dsn("postgres"), connect_timeout=2).close()
            return
        except psycopg.OperationalError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test PostgreSQL did not start ({exc}); log:\n{log_path.read_text()}") from exc
            time.sleep(0.1)
