"""Bucketing of padded batches for CUDA graph replay (pure logic; replay itself needs a GPU and
is checked by `make bench-gpu`, which compares served embeddings with sentence-transformers)."""

from semserve.engine.runtime.cuda_graphs import BATCH_BUCKETS, LENGTH_STEP, bucket_for


def test_smallest_bucket_that_holds_the_batch():
    assert bucket_for(1, 9, 256) == (1, 32)
    assert bucket_for(2, 32, 256) == (4, 32)
    assert bucket_for(17, 33, 256) == (32, 64)
    assert bucket_for(151, 40, 256) == (160, 64)
    assert bucket_for(512, 256, 256) == (512, 256)


def test_padding_rows_stay_within_32_up_to_256_and_64_beyond():
    for rows in range(33, 513):
        batch, _ = bucket_for(rows, 8, 256)
        assert batch - rows < (32 if rows <= 256 else 64)


def test_batches_beyond_every_bucket_run_eagerly():
    assert bucket_for(BATCH_BUCKETS[-1] + 1, 16, 256) is None
    assert bucket_for(4, 300, 256) is None


def test_length_never_exceeds_the_model_limit_when_it_is_not_a_multiple_of_the_step():
    assert bucket_for(4, 100, 100) == (4, 100)
    assert all(b >= 1 for b in BATCH_BUCKETS) and LENGTH_STEP % 8 == 0
