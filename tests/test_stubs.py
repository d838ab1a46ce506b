"""The committed stubs must be exactly what `make protos` generates from the protos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "client" / "semserve_client" / "v1"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_protos", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_protos(tmp_path):
    written = _generator().generate(tmp_path)
    fresh = {p.name: p.read_text() for p in written}
    committed = {p.name: p.read_text() for p in COMMITTED.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
    assert set(fresh) == set(committed), "stub files differ from the protos: run `make protos` and commit"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale stubs {stale}: run `make protos` and commit"


def test_every_proto_enum_has_an_unspecified_zero():
    from semserve_client.v1 import common_pb2, encoder_pb2, info_pb2, reranker_pb2, search_pb2

    for module in (common_pb2, encoder_pb2, info_pb2, reranker_pb2, search_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.full_name
        assert module.DESCRIPTOR.package == "semserve.v1"
