"""A TCP forwarder run as its own process, to take a service "down" and bring it back on the same port.

Fault tests put it in front of a server that keeps its state in memory (moto_server): killing the forwarder
is an outage of the endpoint as clients see it (connections reset, then refused), while the objects behind
it survive. Run it as ``python -m tests.tcp_proxy LISTEN_PORT TARGET_PORT``; `TcpProxy` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

_START_TIMEOUT_S = 60.0
#: What the forwarder prints once it listens: the port answering is not enough, another process may hold it.
READY = "tcp_proxy: listening"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(listen_port: int, target_port: int) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            _pipe(client_reader, target_writer), _pipe(target_reader, client_writer), return_exceptions=True
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, reuse_address=True)
    print(READY, flush=True)
    async with server:
        await server.serve_forever()


class TcpProxy:
    """A forwarder from 127.0.0.1:`port` to 127.0.0.1:`target_port` in its own process; kill it, start it."""

    def __init__(self, port: int, target_port: int, log: Path) -> None:
        self.port = port
        self.target_port = target_port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The endpoint clients use."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start forwarding and wait until it listens."""
        ready = self._ready_lines()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.tcp_proxy", str(self.port), str(self.target_port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while self._ready_lines() == ready:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the TCP proxy did not start on port {self.port}: {self.log.read_text()}")
            time.sleep(0.05)

    def _ready_lines(self) -> int:
        try:
            return self.log.read_text(errors="replace").count(READY)
        except FileNotFoundError:
            return 0

    def kill(self) -> None:
        """End the forwarder abruptly: open connections break, new ones are refused."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.process = None


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
