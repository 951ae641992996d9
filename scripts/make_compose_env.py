#!/usr/bin/env python3
"""Write the `.env` that compose.yaml needs: a random value for every `${VAR:?...}` it names.

    python scripts/make_compose_env.py [--compose compose.yaml] [--env .env]

compose.yaml has no default secrets; each one is `${VAR:?...}` and `docker compose` refuses to
start until it is set. This fills the gaps: values already in the file (or exported in the
shell) are kept, missing ones are generated: a Fernet key for `*_KEY_ENCRYPTION_KEY`, 32
URL-safe random characters otherwise (they end up in URLs). The file is written with mode
0600. Back it up: losing a key-encryption key loses what it encrypted.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from pathlib import Path

REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?")


def required_variables(compose_text: str) -> list[str]:
    """The `${VAR:?...}` names of compose.yaml, in order of first use."""
    return list(dict.fromkeys(REQUIRED.findall(compose_text)))


def generate(name: str) -> str:
    """A fresh value for `name`: a Fernet key for key-encryption keys, else 32 URL-safe
    characters (letters, digits, `-`, `_`) starting with a letter."""
    if name.endswith("KEY_ENCRYPTION_KEY"):
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-_"
    return "k" + "".join(secrets.choice(alphabet) for _ in range(31))


def read_env(path: Path) -> dict[str, str]:
    """`NAME=value` lines of an existing .env (comments and blanks skipped)."""
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip().strip("'\"")
    return values


def main(argv: list[str] | None = None) -> int:
    """Add every missing required variable to the .env file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compose", type=Path, default=Path("compose.yaml"))
    parser.add_argument("--env", type=Path, default=Path(".env"))
    args = parser.parse_args(argv)
    existing = read_env(args.env)
    added = {
        name: os.environ.get(name) or generate(name)
        for name in required_variables(args.compose.read_text())
        if not existing.get(name)
    }
    lines = [f"{k}={v}" for k, v in existing.items()] + [f"{k}={v}" for k, v in added.items()]
    fd = os.open(args.env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(args.env, 0o600)
    for name in added:
        print(f"{args.env}: {name} generated")  # noqa: T201 - a command-line tool reports on stdout
    print(f"{args.env}: {len(existing)} kept, {len(added)} generated (mode 0600)")  # noqa: T201 - a command-line tool reports on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
