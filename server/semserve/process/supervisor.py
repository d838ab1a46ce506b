"""``semserve serve --frontends N``: one engine process (or one per device, ``--engines
per-device``: process/engines.py), N front-end processes, one port.

Order of events: reserve the port (a bound, non-listening SO_REUSEPORT socket keeps the number
while the children start), start the engines and wait until each has loaded the models (and
the first has recovered the store), then start the front ends, which bind the same port with
SO_REUSEPORT so the kernel spreads connections over them. Health is SERVING only in a front end
that is up, and none is up before every engine is ready.

While serving: a front end that dies is started again in its slot and the server keeps
answering on the others; an engine that dies ends the server at once with a non-zero status
and a log line saying so (an orchestrator restarts it; a server without its engine must not
look alive). On SIGTERM or SIGINT: the front ends drain first (no new calls, calls in flight
finish within the grace period), then the engines stop and the first closes the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from semserve.config import ConfigError, ServerConfig
from semserve.process.children import write_config
from semserve.process.devices import gpu_count
from semserve.process.engines import engine_configs
from semserve.endpoints import check_metrics_port, metrics_description, warn_if_exposed

log = logging.getLogger("semserve")

# A front end that keeps dying is restarted at most this often.
RESTART_INTERVAL_S = 1.0
# The engine gets this long to close the store after SIGTERM before it is killed.
ENGINE_STOP_S = 15.0


def default_frontends(device_spec: str) -> int:
    """Front-end processes for ``--frontends auto``.

    GPU hosts: the engine needs a loop and its device threads, so the other cores run front
    ends, up to 16 per GPU. Single-text calls are bound by the front ends' cores: each front
    end's event loop spends about 0.9 ms of one per unary call on an H100 host (gRPC-Python's
    call handling, the tokenizer). There, 14 front ends against 8 served 31,788 against 22,868
    single-text stream messages/s and 15,166 against 10,656 unary calls/s (1024 in flight) from
    a C load generator, and 32-text calls alike within the runs' spread (docs/benchmarks.md,
    run 25).

    CPU-only hosts: 0, one process. The model's forward passes need the cores there, and on a
    2-core machine one process served more in every workload than one or two front ends
    (docs/benchmarks.md).
    """
    gpus = gpu_count(device_spec)
    if gpus:
        return max(1, min(16 * gpus, (os.cpu_count() or 1) - 2))
    return 0


class ChildFailed(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket: it holds the port number for the front ends,
    and a port already taken by another program fails here, before anything loads."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class Child:
    """One child process and the line it reported on its ready pipe."""

    def __init__(self, role: str, process: asyncio.subprocess.Process, ready_read: int):
        self.role = role
        self.process = process
        self._ready_read = ready_read
        self.exited = asyncio.ensure_future(process.wait())

    @classmethod
    async def start(cls, role: str, module: str, arguments: list[str]) -> "Child":
        ready_read, ready_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *arguments, "--ready-fd", str(ready_write), pass_fds=(ready_write,)
            )
        finally:
            os.close(ready_write)
        return cls(role, process, ready_read)

    async def ready(self) -> str:
        """The text after 'ready', or ChildFailed when the child failed or died first."""
        line = await asyncio.get_running_loop().run_in_executor(None, _read_line, self._ready_read)
        if line.startswith("ready"):
            return line[len("ready"):].strip()
        status = await self.exited
        if line.startswith("failed"):
            raise ChildFailed(line[len("failed"):].strip(), 2 if status == 2 else 1)
        raise ChildFailed(f"the {self.role} process exited with status {status} while starting", 1)

    def signal(self, sig: int) -> None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self, timeout_s: float) -> bool:
        """SIGTERM, then SIGKILL after ``timeout_s``; True when it stopped by itself."""
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout_s)
            return True
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.exited
            return False


def _read_line(fd: int) -> str:
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def _exit_text(status: int) -> str:
    return f"was killed by signal {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"


class Supervisor:
    def __init__(self, config: ServerConfig, frontends: int):
        if frontends < 1:
            raise ValueError("a supervisor runs at least one front-end process")
        self.config = config
        self.frontends = frontends
        self.port: int | None = None
        self._runtime = Path(tempfile.mkdtemp(prefix="semserve-"))
        self._engine_configs = engine_configs(config)
        self._addresses = [f"ipc://{self._runtime}/engine-{i}" for i in range(len(self._engine_configs))]
        self._engines: list[Child] = []
        self._frontends: dict[int, Child] = {}

    async def run(self) -> int:
        try:
            return await self._run()
        except ChildFailed as exc:
            print(f"semserve: {exc}", file=sys.stderr)
            await self._stop_all()
            return exc.status
        finally:
            shutil.rmtree(self._runtime, ignore_errors=True)

    async def _run(self) -> int:
        cfg = self.config
        try:
            reserved = reserve_port(cfg.host, cfg.port)
        except OSError as exc:
            raise ChildFailed(f"cannot bind {cfg.host}:{cfg.port}: {exc.strerror or exc}", 2) from None
        try:  # a metrics port clash ends the start here, before any engine loads a model
            for engine_config in self._engine_configs:
                check_metrics_port(engine_config)
        except ConfigError as exc:
            reserved.close()
            raise ChildFailed(str(exc), 2) from None
        warn_if_exposed(cfg)
        self.port = reserved.getsockname()[1]
        frontend_config = dataclasses.replace(cfg, port=self.port)
        config_file = self._runtime / "config.pickle"
        write_config(frontend_config, config_file)
        arguments = ["--config", str(config_file), "--address", ",".join(self._addresses)]

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_reload)

        started = await self._start_engines()
        count = self.frontends
        await asyncio.gather(*(self._start_frontend(i, arguments) for i in range(count)))
        engines = f"{len(self._engines)} engine processes (one per device), " if len(self._engines) > 1 else ""
        log.info(
            "semserve listening on %s:%d; %s; %s%d front-end processes%s", cfg.host, self.port, started,
            engines, count, metrics_description(cfg),
        )
        status = await self._supervise(stop, arguments)
        reserved.close()
        return status

    async def _start_engines(self) -> str:
        """Start every engine at once (each loads the models on its devices) and wait for all;
        returns the models (every engine holds the same) and every engine's devices, in words."""
        for index, engine_config in enumerate(self._engine_configs):
            config_file = self._runtime / f"engine-{index}.pickle"
            write_config(engine_config, config_file)
            role = "engine" if len(self._engine_configs) == 1 else f"engine {index}"
            self._engines.append(await Child.start(
                role, "semserve.process.engine_main",
                ["--config", str(config_file), "--address", self._addresses[index]]))
        reports = [json.loads(line) for line in await asyncio.gather(*(e.ready() for e in self._engines))]
        devices = [d for r in reports for d in r["devices"]]
        return f"{reports[0]['models']}; devices: {', '.join(devices)}"

    def _forward_reload(self) -> None:
        """SIGHUP: each front end re-reads its API keys and TLS certificate."""
        for child in self._frontends.values():
            child.signal(signal.SIGHUP)

    async def _start_frontend(self, index: int, arguments: list[str]) -> None:
        child = await Child.start(f"front-end {index}", "semserve.process.frontend_main", [*arguments, "--index", str(index)])
        self._frontends[index] = child
        await child.ready()

    async def _supervise(self, stop: asyncio.Event, arguments: list[str]) -> int:
        stopping = asyncio.ensure_future(stop.wait())
        last_restart: dict[int, float] = {}
        while True:
            waits = [stopping, *(e.exited for e in self._engines), *(c.exited for c in self._frontends.values())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            dead = next((e for e in self._engines if e.exited.done()), None)
            if dead is not None:
                log.error(
                    "the %s process %s; stopping the server (calls in flight fail; restart it to serve again)",
                    dead.role, _exit_text(dead.exited.result()),
                )
                for child in (*self._frontends.values(), *self._engines):
                    child.signal(signal.SIGKILL)
                return 1
            if stop.is_set():
                return await self._drain()
            for index, child in list(self._frontends.items()):
                if not child.exited.done():
                    continue
                log.warning("front-end process %d (pid %d) %s; starting it again",
                            index, child.process.pid, _exit_text(child.exited.result()))
                wait = last_restart.get(index, 0.0) + RESTART_INTERVAL_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                last_restart[index] = time.monotonic()
                try:
                    await self._start_frontend(index, arguments)
                except ChildFailed as exc:
                    log.error("front-end process %d did not start again: %s", index, exc)

    async def _drain(self) -> int:
        grace = self.config.grace_period_s
        log.info("stopping: front ends drain (health NOT_SERVING, new calls refused, %.0fs grace), then the engine", grace)
        await asyncio.gather(*(c.stop(grace + 1.0) for c in self._frontends.values()))
        stopped = await asyncio.gather(*(e.stop(ENGINE_STOP_S) for e in self._engines))
        if not all(stopped):
            log.error("an engine did not stop within %.0fs and was killed", ENGINE_STOP_S)
            return 1
        log.info("stopped")
        return 0

    async def _stop_all(self) -> None:
        await asyncio.gather(*(c.stop(2.0) for c in self._frontends.values()))
        await asyncio.gather(*(e.stop(ENGINE_STOP_S) for e in self._engines))


async def serve_with_frontends(config: ServerConfig, frontends: int) -> int:
    return await Supervisor(config, frontends).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m semserve.process.supervisor CONFIG.pickle [FRONTENDS]`` (tests, embedding)."""
    import pickle

    argv = sys.argv[1:] if argv is None else argv
    config: ServerConfig = pickle.loads(Path(argv[0]).read_bytes())
    frontends = int(argv[1]) if len(argv) > 1 and argv[1] != "auto" else max(1, default_frontends(config.device))
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve_with_frontends(config, frontends))


if __name__ == "__main__":
    sys.exit(main())
