"""Fine-tuning encoders on synonym dictionaries, and measuring what the fine-tuning changed.

Kept apart from serving: nothing under ``semserve.training`` is imported by the server, and
nothing here imports sentence-transformers. The output is an ordinary model folder that the
server (and sentence-transformers) loads like any other.
"""
