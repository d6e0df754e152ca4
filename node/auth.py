"""Who a connecting client is: its certificate, its password, or nobody (anonymous).

The decision, in order:

1. On a TLS listener with ``tls_cert_as_username``, the verified client
   certificate names the user (as Mosquitto's ``use_identity_as_username``);
   the CONNECT's user name and password are ignored.
2. A CONNECT with a user name, when a password file is configured, must carry
   that user's password: otherwise "bad user name or password" (v5 0x86, v3 4).
3. Anything else is anonymous and needs ``allow_anonymous`` (by default true
   only on a loopback-only node): otherwise "not authorized" (v5 0x87, v3 5).
   Without a password file a user name cannot be checked, so it is not
   believed either: such a client counts as anonymous, and ACL ``user``
   sections and ``%u`` patterns do not apply to it. (Mosquitto would trust the
   name it was given.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .config import Config, ListenAddress
from .passwords import PasswordFile
from .reason_codes import ReasonCode
from .tls import username_from_certificate


@dataclass(frozen=True, slots=True)
class Identity:
    """The outcome of authenticating one CONNECT."""

    reason: ReasonCode
    """SUCCESS, or why the CONNECT is refused."""
    username: str | None = None
    """The verified user name; None for anonymous clients."""


class Authenticator:
    """Decides who each CONNECT is (see the module docstring for the order)."""

    def __init__(self, config: Config) -> None:
        self.anonymous_allowed = config.anonymous_allowed
        self.cert_username = config.tls_cert_as_username
        self.passwords = (
            PasswordFile(config.password_file) if config.password_file is not None else None
        )

    def nobody_can_log_in(self, address: ListenAddress) -> bool:
        """Whether every CONNECT on ``address`` is refused, whoever sends it.

        True when anonymous clients are refused, no password file can vouch
        for a user, and no client certificate names one (only TLS listeners
        with ``tls_cert_as_username`` have that). Such a node starts, listens
        and refuses everyone; ``Broker.start`` warns about it.
        """
        if self.anonymous_allowed or self.passwords is not None:
            return False
        return not (address.is_tls and self.cert_username != "off")

    def reload(self) -> None:
        """Re-read the password file (SIGHUP); on error the old users stay in force."""
        if self.passwords is not None:
            self.passwords.reload()

    async def authenticate(
        self,
        username: str | None,
        password: bytes | None,
        peercert: dict[str, Any] | None,
        tls: bool,
    ) -> Identity:
        if tls and self.cert_username != "off":
            name = username_from_certificate(peercert, self.cert_username)
            if name is None:
                return Identity(ReasonCode.NOT_AUTHORIZED)
            return Identity(ReasonCode.SUCCESS, name)
        passwords = self.passwords
        if username is not None and passwords is not None:
            # scrypt takes tens of milliseconds: in a thread, the loop keeps serving.
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(None, passwords.verify, username, password):
                return Identity(ReasonCode.SUCCESS, username)
            return Identity(ReasonCode.BAD_USER_NAME_OR_PASSWORD)
        if self.anonymous_allowed:
            return Identity(ReasonCode.SUCCESS)
        if username is not None:
            return Identity(ReasonCode.BAD_USER_NAME_OR_PASSWORD)
        return Identity(ReasonCode.NOT_AUTHORIZED)
