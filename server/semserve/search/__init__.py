"""The searcher: collections of embeddings held as sharded tensors, exact top-k, durable on disk."""
