"""The processes of ``semserve serve --frontends N``: a supervisor starts one engine process,
then N front-end processes sharing the gRPC port; it restarts a dead front end, ends the
server when the engine dies, and drains front ends before the engine on SIGTERM."""
