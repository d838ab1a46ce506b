"""Generated stubs of the semserve.v1 gRPC contract (see protos/generate.py)."""
