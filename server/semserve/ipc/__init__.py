"""The core API across processes: front ends hold a ``RemoteCore`` (client.py), the engine
process runs an ``EngineEndpoint`` (endpoint.py); ZeroMQ DEALER/ROUTER sockets over ``ipc://``
carry pickled calls whose NumPy arrays travel as out-of-band frames (wire.py)."""
