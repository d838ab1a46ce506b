"""Security over real channels: TLS and mTLS, API keys with roles on every RPC, reloads without a
restart, LoadModel held to the model root, nothing leaked, and the metrics port checked first."""

from __future__ import annotations

import os
import signal
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certs import Authority
from conftest import server_config, start_server
from semserve.config import ModelSpec
from semserve_client import SemserveClient
from semserve_client.v1 import common_pb2, info_pb2

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The model root: a tiny encoder in it."""
    from model_factory import make_tiny_st_encoder

    root = tmp_path_factory.mktemp("model-root")
    make_tiny_st_encoder(root / "tiny")
    return root


def tiny_config(models: Path, **overrides):
    return server_config(encoders=[ModelSpec("tiny", models / "tiny", "encoder")], **overrides)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def make_key(role: str) -> tuple[str, str]:
    """A key and its keys-file line, from `semserve api-key`."""
    out = subprocess.run([sys.executable, "-m", "semserve", "api-key", "--role", role, "--label", f"test-{role}"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": f"{ROOT / 'server'}:{ROOT / 'client'}"}).stdout
    key = out.split("it is not stored): ", 1)[1].split()[0]
    line = out.split("line for --api-keys-file: ", 1)[1].strip()
    return key, line


# -- TLS ----------------------------------------------------------------------------------

def test_tls_serves_tls_clients_and_refuses_plaintext(tmp_path, models):
    ca = Authority(tmp_path / "pki", "ca")
    server_pem = ca.issue("server", server=True)
    server = start_server(tiny_config(models, tls_cert=server_pem.cert, tls_key=server_pem.key))
    try:
        with SemserveClient(server.address, timeout=30, ca_cert=ca.pem.cert) as c:
            assert c.embed(["over tls"]).vectors.shape[0] == 1
        with SemserveClient(server.address, timeout=5) as plain:
            code, _ = code_of(lambda: plain.embed(["plaintext"]))
            assert code == grpc.StatusCode.UNAVAILABLE
        other = Authority(tmp_path / "other", "other-ca")
        with SemserveClient(server.address, timeout=5, ca_cert=other.pem.cert) as wrong:
            assert code_of(lambda: wrong.embed(["untrusted server"]))[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mtls_refuses_clients_without_a_certificate_or_from_another_ca(tmp_path, models):
    ca = Authority(tmp_path / "pki", "ca")
    server_pem, client_pem = ca.issue("server", server=True), ca.issue("client", server=False)
    stranger = Authority(tmp_path / "stranger", "stranger-ca").issue("intruder", server=False)
    server = start_server(tiny_config(models, tls_cert=server_pem.cert, tls_key=server_pem.key,
                                      tls_client_ca=ca.pem.cert))
    try:
        with SemserveClient(server.address, timeout=30, ca_cert=ca.pem.cert, client_cert=client_pem.cert,
                            client_key=client_pem.key) as c:
            assert c.embed(["mutual"]).vectors.shape[0] == 1
        for cert, key in ((None, None), (stranger.cert, stranger.key)):
            with SemserveClient(server.address, timeout=5, ca_cert=ca.pem.cert, client_cert=cert,
                                client_key=key) as refused:
                assert code_of(lambda: refused.embed(["no"]))[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path, models):
    first, second = Authority(tmp_path / "first", "first-ca"), Authority(tmp_path / "second", "second-ca")
    live = tmp_path / "live"
    live.mkdir()
    old = first.issue("server", server=True)
    shutil.copy(old.cert, live / "tls.crt")
    shutil.copy(old.key, live / "tls.key")
    server = start_server(tiny_config(models, tls_cert=live / "tls.crt", tls_key=live / "tls.key"))
    try:
        held = SemserveClient(server.address, timeout=30, ca_cert=first.pem.cert)
        assert held.embed(["before"]).vectors.shape[0] == 1
        new = second.issue("server", server=True)
        for name, source in (("tls.key", new.key), ("tls.crt", new.cert)):  # as a secret volume swaps files
            shutil.copy(source, live / (name + ".new"))
            os.replace(live / (name + ".new"), live / name)
        with SemserveClient(server.address, timeout=30, ca_cert=second.pem.cert) as renewed:
            assert renewed.embed(["after"]).vectors.shape[0] == 1
        assert held.embed(["open connection kept"]).vectors.shape[0] == 1
        held.close()
    finally:
        server.stop()


# -- API keys and roles -------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(tmp_path_factory, models):
    keys = {role: make_key(role) for role in ("read", "write", "admin")}
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text("# role sha256 label\n" + "\n".join(line for _, line in keys.values()) + "\n")
    server = start_server(tiny_config(models, api_keys_file=keys_file, model_root=models))
    yield server, {role: key for role, (key, _) in keys.items()}, keys_file
    server.stop()


def _calls(c: SemserveClient, models: Path) -> dict[str, list]:
    """One call per class of RPC, by the least role it needs."""
    def load_and_unload():
        c.admin.LoadModel(info_pb2.LoadModelRequest(name="loaded", path="tiny", kind=common_pb2.MODEL_KIND_ENCODER),
                          timeout=120)
        c.admin.UnloadModel(info_pb2.UnloadModelRequest(name="loaded"), timeout=60)

    def reflect():
        stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=10)
        return list(answers)

    return {
        "read": [lambda: c.embed(["read"]), lambda: c.list_collections(), lambda: c.info(), reflect,
                 lambda: c.search_collection("keyed", [[1.0] * 256], top_k=1)],
        "write": [lambda: c.upsert("keyed", ["w"], ["written"], embeddings=[[1.0] * 256]),
                  lambda: c.delete("keyed", ["absent"])],
        "admin": [load_and_unload],
    }


def test_each_role_against_each_class_of_rpc(keyed, models):
    server, keys, _ = keyed
    with SemserveClient(server.address, timeout=60, api_key=keys["write"]) as c:
        c.create_collection("keyed", dimension=256, metric="dot")
    granted = {"read": {"read"}, "write": {"read", "write"}, "admin": {"read", "write", "admin"}}
    for role, key in [*keys.items(), ("none", None), ("wrong", "ssk_not-a-key")]:
        with SemserveClient(server.address, timeout=60, api_key=key) as c:
            health = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # health needs no key
            for needed, calls in _calls(c, models).items():
                for call in calls:
                    code, message = code_of(call)
                    if role in ("none", "wrong"):
                        expected = grpc.StatusCode.UNAUTHENTICATED
                    elif needed in granted[role]:
                        expected = grpc.StatusCode.OK
                    else:
                        expected = grpc.StatusCode.PERMISSION_DENIED
                    assert code == expected, (role, needed, code, message)
                    assert key is None or key not in message


def test_getinfo_shows_paths_to_admins_only_and_not_found_names_only_the_collection_asked(keyed, models):
    server, keys, _ = keyed
    with SemserveClient(server.address, timeout=60, api_key=keys["read"]) as reader:
        assert all(m.path == "" for m in reader.info().models)
        with SemserveClient(server.address, timeout=60, api_key=keys["write"]) as writer:
            writer.create_collection("private-name", dimension=8, metric="dot")
        code, message = code_of(lambda: reader.get_collection("asked-for"))
        assert code == grpc.StatusCode.NOT_FOUND and "asked-for" in message and "private-name" not in message
    with SemserveClient(server.address, timeout=60, api_key=keys["admin"]) as admin:
        assert [m.path for m in admin.info().models] == [str(models / "tiny")]


def test_load_model_stays_inside_the_model_root(keyed, models, tmp_path):
    server, keys, _ = keyed
    outside = tmp_path / "outside-model"
    shutil.copytree(models / "tiny", outside)
    (models / "escape").symlink_to(outside, target_is_directory=True)
    try:
        with SemserveClient(server.address, timeout=60, api_key=keys["admin"]) as c:
            for path in ("/etc", "../../../../etc", "/proc/self", str(outside), "escape", "tiny/../../"):
                code, message = code_of(lambda: c.admin.LoadModel(
                    info_pb2.LoadModelRequest(name="x", path=path, kind=common_pb2.MODEL_KIND_ENCODER), timeout=60))
                assert (code, message) == (grpc.StatusCode.PERMISSION_DENIED, "path is outside the model root"), path
            code, message = code_of(lambda: c.admin.LoadModel(
                info_pb2.LoadModelRequest(name="x", path="missing", kind=common_pb2.MODEL_KIND_ENCODER), timeout=60))
            assert code == grpc.StatusCode.NOT_FOUND and str(models) not in message
    finally:
        (models / "escape").unlink()


def test_a_changed_keys_file_takes_effect_without_a_restart(keyed):
    server, keys, keys_file = keyed
    before = keys_file.read_text()
    fresh, line = make_key("read")
    try:
        with SemserveClient(server.address, timeout=30, api_key=fresh) as c:
            assert code_of(lambda: c.embed(["x"]))[0] == grpc.StatusCode.UNAUTHENTICATED
            keys_file.write_text(before + line + "\n")
            deadline = time.monotonic() + 10
            while code_of(lambda: c.embed(["x"]))[0] != grpc.StatusCode.OK:
                assert time.monotonic() < deadline, "the new key was not accepted within 10 s"
                time.sleep(0.2)
    finally:
        keys_file.write_text(before)


# -- metrics and exposure -----------------------------------------------------------------

@pytest.mark.parametrize("frontends", ["0", "1"])
def test_a_metrics_port_clash_stops_the_server_before_any_model_loads(models, frontends):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "semserve", "serve", "--port", "0", "--device", "cpu", "--frontends", frontends,
             "--metrics-port", str(port), "--encoder", f"tiny={models / 'tiny'}"],
            capture_output=True, text=True, timeout=120,
        )
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, output
    assert len(output) == 1 and f"cannot bind the metrics port 127.0.0.1:{port}" in output[0], output
    assert time.monotonic() - started < 60


def test_a_server_open_beyond_loopback_without_keys_or_tls_says_so(models):
    from test_lifecycle import start_server as start_cli

    proc, _, lines = start_cli("--host", "0.0.0.0", "--encoder", f"tiny={models / 'tiny'}")
    try:
        warnings = [line for line in lines if "with no API keys and no TLS" in line]
        assert len(warnings) == 1, lines
    finally:
        proc.kill()
        proc.wait(10)


def test_the_node_client_speaks_mtls_with_a_key(tmp_path, models):
    node = shutil.which("node")
    if node is None or not (ROOT / "client" / "node" / "node_modules").is_dir():
        pytest.skip("node or client/node/node_modules is missing (make test installs them)")
    ca = Authority(tmp_path / "pki", "ca")
    server_pem, client_pem = ca.issue("server", server=True), ca.issue("client", server=False)
    key, line = make_key("read")
    (tmp_path / "keys.txt").write_text(line + "\n")
    server = start_server(tiny_config(models, tls_cert=server_pem.cert, tls_key=server_pem.key,
                                      tls_client_ca=ca.pem.cert, api_keys_file=tmp_path / "keys.txt"))
    try:
        base = [node, "cli.js", "--target", server.address, "--ca-cert", str(ca.pem.cert),
                "--client-cert", str(client_pem.cert), "--client-key", str(client_pem.key)]
        run = lambda *extra: subprocess.run([*base, *extra], cwd=ROOT / "client" / "node", capture_output=True,
                                             text=True, timeout=60)
        done = run("--api-key", key, "embed", "hello")
        assert done.returncode == 0, done.stderr
        assert '"dimension":256' in done.stdout
        denied = run("embed", "hello")
        # (node warns about a TLS server name that is an IP address; the status is the last line)
        assert denied.returncode == 1 and denied.stderr.strip().splitlines()[-1].startswith("UNAUTHENTICATED"), \
            denied.stderr
    finally:
        server.stop()


@pytest.mark.parametrize("frontends", ["0", "1"])
def test_sighup_reloads_the_keys_even_when_the_file_looks_unchanged(tmp_path, models, frontends):
    from test_lifecycle import start_server as start_cli

    old_key, old_line = make_key("read")
    new_key, new_line = make_key("read")
    assert len(old_line) == len(new_line)
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(old_line + "\n")
    stat = keys_file.stat()
    proc, address, _ = start_cli("--frontends", frontends, "--api-keys-file", str(keys_file),
                                 "--encoder", f"tiny={models / 'tiny'}")
    try:
        with SemserveClient(address, timeout=30, api_key=new_key) as c:
            assert code_of(lambda: c.embed(["x"]))[0] == grpc.StatusCode.UNAUTHENTICATED
            with open(keys_file, "r+") as f:  # same inode, size and times: only SIGHUP can tell
                f.write(new_line + "\n")
            os.utime(keys_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            time.sleep(1.5)
            assert code_of(lambda: c.embed(["x"]))[0] == grpc.StatusCode.UNAUTHENTICATED
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while code_of(lambda: c.embed(["x"]))[0] != grpc.StatusCode.OK:
                assert time.monotonic() < deadline, "SIGHUP did not reload the keys"
                time.sleep(0.2)
            assert proc.poll() is None  # a reload never stops the server
    finally:
        proc.kill()
        proc.wait(10)


def test_reflection_can_be_turned_off(models):
    server = start_server(tiny_config(models, reflection=False))
    try:
        with SemserveClient(server.address, timeout=30) as c:
            stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
            code, _ = code_of(lambda: list(stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)))
            assert code == grpc.StatusCode.UNIMPLEMENTED
            assert c.embed(["still serving"]).vectors.shape[0] == 1
    finally:
        server.stop()
