"""Services of the v1 contract that this version answers with UNIMPLEMENTED and a message."""

from __future__ import annotations

from semserve.service.errors import unimplemented
from semserve_client.v1 import search_pb2_grpc


class PendingSearchServicer(search_pb2_grpc.SearchServiceServicer):
    CreateCollection = unimplemented("CreateCollection", "corpus and search")
    DropCollection = unimplemented("DropCollection", "corpus and search")
    ListCollections = unimplemented("ListCollections", "corpus and search")
    GetCollection = unimplemented("GetCollection", "corpus and search")
    Upsert = unimplemented("Upsert", "corpus and search")
    UpsertStream = unimplemented("UpsertStream", "corpus and search")
    Delete = unimplemented("Delete", "corpus and search")
    GetDocuments = unimplemented("GetDocuments", "corpus and search")
    Search = unimplemented("Search", "corpus and search")
