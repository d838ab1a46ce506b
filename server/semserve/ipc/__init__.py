"""The core API across processes: front ends hold a ``RemoteCore`` (client.py), the engine
process runs an ``EngineEndpoint`` (endpoint.py); a Unix socket, read and written by each side's
event loop, carries pickled calls whose NumPy arrays travel as out-of-band frames (wire.py)."""
