"""Who is calling. Until authentication lands (a later issue) there is one caller:
the development principal, and the server only binds loopback (see config)."""

from __future__ import annotations

from gateway.models import Principal

__all__ = ["DEV_PRINCIPAL", "DevelopmentAuthenticator"]

#: The only caller until authentication lands: id ``anonymous``, tenant ``default``,
#: role ``user``, all task and file scopes.
DEV_PRINCIPAL = Principal(
    id="anonymous",
    tenant="default",
    roles=("user",),
    scopes=("tasks:execute", "tasks:read", "tasks:cancel", "files:read", "files:write"),
    auth_scheme="none",
)


class DevelopmentAuthenticator:
    """Maps every call to :data:`DEV_PRINCIPAL` (loopback-only development mode)."""

    def authenticate(self, headers: dict[str, str]) -> Principal:
        """The principal for a call with these (lower-cased) headers / metadata."""
        return DEV_PRINCIPAL
