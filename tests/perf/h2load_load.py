"""Single-text Embed and EmbedStream loads driven by h2load, a C HTTP/2 load generator (Debian's
``nghttp2-client``), for the GPU benchmark. Not part of `make test`.

Why: on one host, the Python load generator (``semserve-client bench``) spends about as much CPU
per call as a front end does (run 21: 3.9 cores of clients beside 8 of front ends at 9,476 unary
calls/s), so it measures the host's cores shared by both, not what the server sustains. h2load
sends the same gRPC calls (one length-prefixed protobuf message per unary call, a run of them on
one stream for EmbedStream) with a few percent of that CPU.

What h2load cannot see is the gRPC status in the trailers, so every figure is checked against the
server: the texts its engine computed (``GetInfo``) and the bytes of the answers, which must be
whole responses (an error is a trailers-only answer with no message, or a short one in a stream).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
from pathlib import Path

from semserve_client.v1 import common_pb2, encoder_pb2


def framed(message) -> bytes:
    """One gRPC message on the wire: uncompressed flag, big-endian length, the protobuf bytes."""
    body = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(body)) + body


def typical_texts(texts: list[str], count: int) -> list[str]:
    """``count`` consecutive texts whose mean word count is nearest that of ``texts``: h2load
    repeats one request body, so it should be an average one."""
    words = [len(t.split()) for t in texts]
    mean = sum(words) / len(words)
    start = min(range(len(texts) - count + 1), key=lambda i: abs(sum(words[i:i + count]) / count - mean))
    return texts[start:start + count]


def request_body(mode: str, model: str, texts: list[str], per_call: int) -> tuple[bytes, str]:
    """The request body and the method's path: one Embed of ``per_call`` texts, or ``per_call``
    single-text EmbedStream messages with ids."""
    if mode == "unary":
        return framed(encoder_pb2.EmbedRequest(model=model, texts=typical_texts(texts, per_call))), "Embed"
    messages = (encoder_pb2.EmbedStreamRequest(id=str(i), request=encoder_pb2.EmbedRequest(
        model=model, texts=[texts[i % len(texts)]])) for i in range(per_call))
    return b"".join(map(framed, messages)), "EmbedStream"


def parse(output: str) -> dict:
    """h2load's summary as numbers: requests done and succeeded, their rate, data bytes and the
    mean time of a request."""
    def number(pattern: str) -> float:
        match = re.search(pattern, output)
        if match is None:
            raise RuntimeError(f"h2load output lacks {pattern!r}:\n{output}")
        return float(match.group(1))

    return {
        "finished_s": number(r"finished in ([\d.]+)s"),
        "requests_per_s": number(r"finished in [\d.]+s, ([\d.]+) req/s"),
        "done": int(number(r"(\d+) done")),
        "succeeded": int(number(r"(\d+) succeeded")),
        "failed": int(number(r"(\d+) failed")),
        "errored": int(number(r"(\d+) errored")),
        "data_bytes": int(number(r"\(\d+\) headers [^,]*, [\d.]+\w*B \((\d+)\) data")),
        "mean_ms": _ms(re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(ms|us|s)", output)),
    }


def _ms(match) -> float | None:
    if match is None:
        return None
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_h2load(h2load: str, address: str, mode: str, model: str, texts: list[str], duration_s: float,
               warmup_s: float, connections: int, streams: int, threads: int, per_call: int = 1,
               rate_per_connection: int = 0) -> dict:
    """Run one load and return h2load's figures in the units of the Python load's summary:
    ``items_per_s`` is texts per second (a call's texts, or a stream's messages, each count once).
    ``rate_per_connection``: requests per second each connection sends (h2load's ``--rps``);
    0 sends as fast as answers come."""
    body, method = request_body(mode, model, texts, per_call)
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(body)
    log_file = f.name + ".log"
    try:
        cmd = [h2load, "-D", str(int(duration_s)), "--warm-up-time", str(int(warmup_s)), "-c", str(connections),
               "-m", str(streams), "-t", str(threads), "-d", f.name, "-H", "content-type: application/grpc",
               "-H", "te: trailers", f"--log-file={log_file}", f"http://{address}/semserve.v1.EncoderService/{method}"]
        if rate_per_connection:
            cmd[1:1] = ["--rps", str(rate_per_connection)]
        env = dict(os.environ)
        library = Path(h2load).resolve().parents[1] / "lib" / "x86_64-linux-gnu"  # an unpacked .deb's layout
        if library.is_dir():
            env["LD_LIBRARY_PATH"] = f"{library}:{env.get('LD_LIBRARY_PATH', '')}"
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration_s + warmup_s + 60)
        latencies = measured_latencies_ms(Path(log_file), warmup_s) if os.path.exists(log_file) else []
    finally:
        for path in (f.name, log_file):
            if os.path.exists(path):
                os.unlink(path)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    figures = parse(done.stdout)
    figures.update(percentiles(latencies))
    figures["summary"] = done.stdout[done.stdout.find("finished in"):].strip()
    figures.update(
        mode=mode, connections=connections, streams_per_connection=streams, threads=threads,
        texts_per_call=per_call, items_per_s=round(figures["requests_per_s"] * per_call, 1),
        bytes_per_text=round(figures["data_bytes"] / max(1, figures["succeeded"] * per_call), 1),
    )
    return figures


def measured_latencies_ms(log_file: Path, warmup_s: float) -> list[float]:
    """Each answered call's time, from h2load's per-request log (start in µs since the epoch,
    HTTP status, µs to the end of the answer), for the calls started after the warm-up."""
    rows = [line.split("\t") for line in log_file.read_text().splitlines() if line.strip()]
    rows = [(int(start), int(status), int(took)) for start, status, took, *_ in rows]
    if not rows:
        return []
    first = min(start for start, _, _ in rows)
    return [took / 1000 for start, status, took in rows if status == 200 and start >= first + warmup_s * 1e6]


def percentiles(latencies_ms: list[float]) -> dict:
    if not latencies_ms:
        return {}
    ordered = sorted(latencies_ms)
    at = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)  # noqa: E731
    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "logged_calls": len(ordered)}


def response_bytes(dimension: int) -> int:
    """The smallest answer a served text can have on the wire: an EmbedResponse with one float
    vector of ``dimension`` (its other fields only add to it)."""
    response = encoder_pb2.EmbedResponse(embeddings=[common_pb2.Embedding(values=[0.5] * dimension)])
    return len(response.SerializeToString())
