"""The gRPC front end: translates protobuf requests into core calls and core errors into gRPC
statuses, tokenizes, validates, and reports timing. It holds no model and imports no torch, so
several front-end processes can serve one engine (process/)."""
