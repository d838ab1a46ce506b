"""The core API: what semserve does, independent of how a request arrived.

The gRPC front end only translates protobuf messages to calls of ``Core`` (core/api.py) and
``CoreError`` codes to gRPC statuses. Two implementations exist: the engine itself, called in
the same process (engine/engine.py), and ``RemoteCore`` (ipc/client.py), which forwards every
call to an engine process. The front end never knows which one it holds.
"""

from semserve.core.api import Core
from semserve.core.errors import CoreError

__all__ = ["Core", "CoreError"]
