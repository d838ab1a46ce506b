"""The engine: holds the models, their dynamic batchers and device workers, and the search
store (the only writer). It is reached through the core API, in process or over IPC."""
