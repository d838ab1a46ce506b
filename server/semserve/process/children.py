"""What the engine and front-end processes share: how they start, report ready, log, and stop.

A child gets the pickled ``ServerConfig`` in a file of the supervisor's private runtime folder
and a pipe on which it writes one line, ``ready ...`` or ``failed ...``; the supervisor reads it
(end of file means the child died first). Children ignore SIGINT (a Ctrl-C reaches the whole
process group; the supervisor decides the order of the stop), stop on SIGTERM, and stop by
themselves when their parent disappears, so a killed supervisor leaves nothing behind.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import NoReturn

from semserve.config import ServerConfig

PARENT_POLL_S = 0.5


# How long a thread of a child process may hold the GIL while another waits for it (Python's
# default is 5 ms). In the engine, the device threads wait for the GPU without the GIL and need
# it back to hand over results and start the next batch; in a front end, the tokenizer threads
# encode without the GIL and need it back to build the request. At 5 ms each hand-back could
# wait that long behind the event loop, a request's latency growing by it at every step
# (docs/benchmarks.md).
GIL_SWITCH_INTERVAL_S = 0.0005


def child_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="pickled ServerConfig written by the supervisor")
    parser.add_argument("--address", required=True,
                        help="the engine's socket address, ipc://PATH (a front end of a per-device server: every engine's, comma-separated)")
    parser.add_argument("--ready-fd", type=int, required=True, help="pipe to write the ready line to")
    return parser


def read_config(path: str) -> ServerConfig:
    return pickle.loads(Path(path).read_bytes())


def write_config(config: ServerConfig, path: Path) -> None:
    path.write_bytes(pickle.dumps(config))


def setup_logging(config: ServerConfig, role: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {role}[%(process)d] %(name)s: %(message)s",
    )


def exit_now(code: int) -> NoReturn:
    """End a server process whose state is already safe (store closed, calls answered or past
    their grace period) without waiting for its worker threads: a forward pass still running on
    a compute thread would otherwise hold the interpreter's exit for as long as it takes
    (seconds on a CPU), and SIGTERM must end the process by grace + 1 s."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def report(fd: int, line: str) -> None:
    """Tell the supervisor how the start went (once), then close the pipe."""
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    finally:
        os.close(fd)


async def stop_requested() -> None:
    """Return on SIGTERM, or once the parent (the supervisor) is gone."""
    loop = asyncio.get_running_loop()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            logging.getLogger("semserve").error("the supervisor process is gone; stopping")
            return
        try:
            await asyncio.wait_for(stop.wait(), PARENT_POLL_S)
        except TimeoutError:
            pass
