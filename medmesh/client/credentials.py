"""Where the CLI keeps its session between runs: one JSON file readable by its owner only.

`$XDG_CONFIG_HOME/medmesh/credentials.json`, else `~/.config/medmesh/credentials.json`
(folder 0700, file 0600). The file is written whole or not at all (a temporary file created
0600 and renamed over it), so a run interrupted mid-write never leaves a half session; every
refresh rewrites it, because refresh tokens are single use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medmesh.client.tokens import Tokens


def credentials_path(environ: Mapping[str, str]) -> Path:
    """The credentials file for this user (see the module docstring)."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return Path(base) / "medmesh" / "credentials.json"


@dataclass(frozen=True)
class Session:
    """What `medmesh login` stores: where, as whom, and the tokens."""

    address: str
    tls: bool
    email: str
    tokens: Tokens


class CredentialStore:
    """Reads and writes one credentials file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Session | None:
        """The stored session, or None when there is none."""
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return Session(
            address=document["address"],
            tls=bool(document.get("tls", False)),
            email=document.get("email", ""),
            tokens=Tokens(**document["tokens"]),
        )

    def save(self, session: Session) -> None:
        """Replace the stored session (file 0600 in a 0700 folder)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {
            "address": session.address,
            "tls": session.tls,
            "email": session.email,
            "tokens": json.loads(session.tokens.to_json()),
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            with os.fdopen(os.open(temporary, flags, 0o600), "w") as handle:
                os.fchmod(handle.fileno(), 0o600)  # whatever an older leftover file said
                json.dump(document, handle)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, self.path)

    def clear(self) -> None:
        """Forget the session."""
        self.path.unlink(missing_ok=True)
