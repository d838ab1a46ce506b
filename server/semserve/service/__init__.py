"""The gRPC service layer: validates requests, maps every failure to a precise status,
and turns batcher results into responses."""
