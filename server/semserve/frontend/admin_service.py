"""AdminService: LoadModel and UnloadModel, for callers presenting the admin token.

The engine loads and unloads; every front end sees the change through the models epoch
(frontend/models.py), so a model loaded through one front end is served by all.
"""

from __future__ import annotations

import hmac

import grpc

from semserve.core.api import Core
from semserve.core.types import CROSS_ENCODER, ENCODER
from semserve.frontend.errors import ServiceError, invalid_argument, unary_rpc
from semserve.frontend.info_service import model_info
from semserve.frontend.models import ModelDirectory
from semserve_client.v1 import common_pb2, info_pb2, info_pb2_grpc

_KINDS = {common_pb2.MODEL_KIND_ENCODER: ENCODER, common_pb2.MODEL_KIND_CROSS_ENCODER: CROSS_ENCODER}


class AdminServicer(info_pb2_grpc.AdminServiceServicer):
    def __init__(self, core: Core, models: ModelDirectory, admin_token: str | None):
        self._core = core
        self._models = models
        self._token = admin_token

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not self._token:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "model management is disabled on this server; start it with --admin-token to enable it",
            )
        metadata = dict(context.invocation_metadata() or ())
        given = metadata.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED, "send the admin token as 'authorization: Bearer <token>' metadata"
            )

    @unary_rpc
    async def LoadModel(self, request, context):
        self._authorize(context)
        if not request.name.strip():
            raise invalid_argument("name is empty; give the name requests will use for this model")
        if request.kind not in _KINDS:
            raise invalid_argument("kind must be MODEL_KIND_ENCODER or MODEL_KIND_CROSS_ENCODER")
        if not request.path:
            raise invalid_argument("path is empty; give a model folder on the server's filesystem")
        model = await self._core.load_model(request.name, _KINDS[request.kind], request.path)
        await self._models.refresh()
        return info_pb2.LoadModelResponse(model=model_info(model))

    @unary_rpc
    async def UnloadModel(self, request, context):
        self._authorize(context)
        await self._core.unload_model(request.name)
        await self._models.refresh()
        return info_pb2.UnloadModelResponse()
