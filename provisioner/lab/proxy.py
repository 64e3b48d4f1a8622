"""The lab's apt proxy: HTTP GET and CONNECT, to Debian's mirror hosts only.

Lab hosts have no route out; apt reaches the Debian mirror through this proxy, which listens on
the bridge address only. It is a small asyncio program of our own rather than tinyproxy because
it needs nothing beyond Python (no .deb to fetch and unpack), filters on the exact host names
read from the controller's apt sources (tinyproxy filters are regexes over URLs), and logs one
line per request, which is what one wants when a role's apt task fails.

Plain ``GET http://host/path`` requests are forwarded on a kept-alive upstream connection as
long as the client keeps asking the same host; when it switches host the connection is closed
after the pending responses and apt reconnects, so every request is checked against the list.

Run it as ``python -m provisioner.lab.proxy --listen 10.77.0.1 --allow deb.debian.org``;
``start``/``stop`` below do that detached for ``lab up``/``lab down``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from provisioner.lab.config import PROXY_PORT, REPO_DIR, LabError

MAX_HEADER = 64 * 1024
ALLOWED_PORTS = {80, 443}


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    return head if len(head) <= MAX_HEADER else None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


class Proxy:
    """Forwards requests whose host is in ``allowed``; answers 403 to everything else."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = {h.lower() for h in allowed}

    def permitted(self, host: str, port: int) -> bool:
        return host.lower() in self.allowed and port in ALLOWED_PORTS

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await _read_head(reader)
            if head is None:
                return
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method == "CONNECT":
                await self._connect(target, reader, writer)
            else:
                await self._forward(head, reader, writer)
        except (ValueError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _deny(
        self, writer: asyncio.StreamWriter, what: str, code: str = "403 Forbidden"
    ) -> None:
        _log(f"DENY {what}")
        body = f"coopctl lab proxy: {what} is not allowed\n".encode()
        writer.write(
            f"HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _connect(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port_s = target.rpartition(":")
        port = int(port_s) if port_s.isdigit() else 0
        if not self.permitted(host, port):
            await self._deny(writer, f"CONNECT {target}")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=20
            )
        except (TimeoutError, OSError) as exc:
            await self._deny(writer, f"CONNECT {target} ({exc})", "502 Bad Gateway")
            return
        _log(f"CONNECT {target}")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        up_writer.close()

    async def _forward(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream: tuple[str, int] | None = None
        up_writer: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        try:
            while head is not None:
                line, _, rest = head.partition(b"\r\n")
                method, target, version = line.decode("latin-1").split(" ", 2)
                url = urlsplit(target)
                host, port = (url.hostname or ""), (url.port or 80)
                if method not in ("GET", "HEAD") or url.scheme != "http":
                    await self._deny(writer, f"{method} {target}", "405 Method Not Allowed")
                    return
                if not self.permitted(host, port):
                    await self._deny(writer, f"GET {target}")
                    return
                if upstream not in (None, (host, port)):
                    break  # another host: finish the pending responses, the client reconnects
                if up_writer is None:
                    try:
                        up_reader, up_writer = await asyncio.wait_for(
                            asyncio.open_connection(host, port), timeout=20
                        )
                    except (TimeoutError, OSError) as exc:
                        await self._deny(writer, f"GET {target} ({exc})", "502 Bad Gateway")
                        return
                    upstream = (host, port)
                    pump = asyncio.create_task(_pipe(up_reader, writer))
                _log(f"{method} {target}")
                path = url.path or "/"
                if url.query:
                    path += "?" + url.query
                headers = [
                    h
                    for h in rest.split(b"\r\n")
                    if h and not h.lower().startswith((b"proxy-connection:", b"proxy-auth"))
                ]
                up_writer.write(
                    f"{method} {path} {version}\r\n".encode("latin-1")
                    + b"".join(h + b"\r\n" for h in headers)
                    + b"\r\n"
                )
                await up_writer.drain()
                head = await _read_head(reader)
            if up_writer is not None:
                with contextlib.suppress(Exception):
                    up_writer.write_eof()
            if pump is not None:
                await pump
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            if up_writer is not None:
                up_writer.close()


async def serve(listen: str, port: int, allowed: set[str]) -> None:
    proxy = Proxy(allowed)
    server = await asyncio.start_server(proxy.handle, listen, port, reuse_address=True)
    _log(f"listening on {listen}:{port}, allowing {', '.join(sorted(allowed))}")
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with server:
        await stop
    _log("stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="address to listen on (the bridge's)")
    parser.add_argument("--port", type=int, default=PROXY_PORT)
    parser.add_argument("--allow", action="append", required=True, help="host name to allow")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.port, set(args.allow)))


# -- running it detached for a lab ------------------------------------------------------------
def _pid_alive(pidfile: Path, marker: str) -> int | None:
    """The proxy's PID if the pidfile names a live proxy for this address, else None."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if "provisioner.lab.proxy" in cmdline and marker in cmdline else None


def running(state_dir: Path, listen: str) -> int | None:
    return _pid_alive(state_dir / "proxy.pid", f"--listen {listen} ")


def start(state_dir: Path, listen: str, allowed: tuple[str, ...], port: int = PROXY_PORT) -> int:
    """Start the proxy detached (own session, output to STATE/proxy.log) unless it runs."""
    pid = running(state_dir, listen)
    if pid:
        return pid
    argv = [sys.executable, "-m", "provisioner.lab.proxy", "--listen", listen, "--port", str(port)]
    for host in allowed:
        argv += ["--allow", host]
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
    with open(state_dir / "proxy.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=REPO_DIR,
            env=env,
        )
    (state_dir / "proxy.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"the lab proxy exited at once; see {state_dir / 'proxy.log'}")
        with contextlib.suppress(OSError), socket.create_connection((listen, port), timeout=1):
            return proc.pid
        time.sleep(0.1)
    raise LabError(f"the lab proxy does not answer on {listen}:{port}; see proxy.log")


def stop(state_dir: Path, listen: str) -> None:
    pid = running(state_dir, listen)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
            if not running(state_dir, listen):  # gone, or a zombie with no cmdline
                break
            time.sleep(0.1)
    (state_dir / "proxy.pid").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
