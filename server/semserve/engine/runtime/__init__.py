"""Where batches are computed: devices, one worker per device replica, and the runners
that turn a batch of token ids into model outputs."""
