"""Round trip between two asyncio processes (not part of `make test`): pyzmq DEALER/ROUTER over
ipc:// driven from the loop's descriptor (how the front ends and the engine talked before),
against a plain asyncio Unix socket (how they talk now, ipc/wire.py). Back to back, then with
a 3 ms pause between round trips, a lone caller's pace. Needs pyzmq, which semserve itself no
longer installs:

    pip install pyzmq && python tests/perf/bench_ipc_roundtrip.py
"""
import asyncio
import multiprocessing as mp
import os
import tempfile
import time

import zmq

N, GAP = 2000, 0.003

def zmq_server(path):
    async def main():
        ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(f"ipc://{path}")
        loop = asyncio.get_running_loop(); fd = s.getsockopt(zmq.FD)
        ev = asyncio.Event()
        def readable():
            while s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                ident, msg = s.recv_multipart(zmq.NOBLOCK)
                s.send_multipart([ident, msg], zmq.NOBLOCK)
        loop.add_reader(fd, readable)
        await asyncio.sleep(3600)
    asyncio.run(main())

def unix_server(path):
    class P(asyncio.Protocol):
        def connection_made(self, t): self.t = t
        def data_received(self, d): self.t.write(d)
    async def main():
        srv = await asyncio.get_running_loop().create_unix_server(P, path)
        await asyncio.sleep(3600)
    asyncio.run(main())

async def zmq_client(path, gap):
    ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(f"ipc://{path}")
    loop = asyncio.get_running_loop(); fd = s.getsockopt(zmq.FD)
    fut = None
    def readable():
        nonlocal fut
        while s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            s.recv_multipart(zmq.NOBLOCK)
            if fut and not fut.done(): fut.set_result(None)
    loop.add_reader(fd, readable)
    times = []
    for i in range(N):
        fut = loop.create_future(); t = time.perf_counter()
        s.send_multipart([b"x" * 200], zmq.NOBLOCK)
        readable()  # edge-triggered fd: check once after sending
        await fut; times.append(time.perf_counter() - t)
        if gap: await asyncio.sleep(gap)
    return times

async def unix_client(path, gap):
    loop = asyncio.get_running_loop(); fut = None
    class P(asyncio.Protocol):
        def data_received(self, d):
            if fut and not fut.done(): fut.set_result(None)
    t_, p = await loop.create_unix_connection(P, path)
    times = []
    for i in range(N):
        fut = loop.create_future(); t = time.perf_counter()
        t_.write(b"x" * 200)
        await fut; times.append(time.perf_counter() - t)
        if gap: await asyncio.sleep(gap)
    return times

if __name__ == "__main__":
    d = tempfile.mkdtemp(prefix="ipc-roundtrip-")
    for name, server, client in (("zmq", zmq_server, zmq_client), ("unix", unix_server, unix_client)):
        path = f"{d}/{name}.sock"
        if os.path.exists(path): os.unlink(path)
        p = mp.Process(target=server, args=(path,), daemon=True); p.start(); time.sleep(0.5)
        for gap in (0, GAP):
            ts = sorted(asyncio.run(client(path, gap))[100:])
            print(f"{name} gap {gap*1e3:.0f} ms: p50 {ts[len(ts)//2]*1e6:.1f} us p90 {ts[int(len(ts)*.9)]*1e6:.1f} us", flush=True)
        p.terminate()
