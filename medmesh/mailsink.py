"""A development mail sink: a real SMTP server (aiosmtpd) that writes every mail it accepts to
`<directory>/<timestamp>-<n>.eml` instead of delivering it.

`medmesh up` runs it when MEDMESH_SMTP_URL is unset, so registration and password-reset
mails of a local stack can be read from `<data_dir>/mail/`. Tests use `FreePortController`
with their own handlers. Never expose it: it accepts mail from anyone without auth.

    python -m medmesh.mailsink DIRECTORY [--port N]   # prints smtp://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class FreePortController(Controller):
    """aiosmtpd's threaded Controller that can bind port 0 and reports the port it got."""

    def _trigger_server(self) -> None:
        # The stock readiness probe connects to `self.port`, which is 0 until we read it back.
        if isinstance(self.server, asyncio.Server) and self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

    @property
    def url(self) -> str:
        """`smtp://host:port`, the value for MEDMESH_SMTP_URL."""
        return f"smtp://{self.hostname}:{self.port}"


class EmlDirectoryHandler:
    """Writes each accepted message, as received, to its own `.eml` file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        """Store the message; 250 tells the sender it was accepted."""
        with self._lock:
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{next(self._counter):05d}.eml"
        content = envelope.original_content or envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.directory / name)  # readers never see half a mail
        return "250 Message accepted for delivery"


def start_mail_sink(
    directory: Path, *, host: str = "127.0.0.1", port: int = 0
) -> FreePortController:
    """Start the sink in a background thread; `.url` says where it listens, `.stop()` ends it."""
    controller = FreePortController(EmlDirectoryHandler(directory), hostname=host, port=port)
    controller.start()
    return controller


def main(argv: list[str] | None = None) -> int:
    """Run the sink in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m medmesh.mailsink")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    controller = start_mail_sink(args.directory, port=args.port)
    sys.stdout.write(controller.url + "\n")
    sys.stdout.flush()
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
