"""Derived indexes of each shard replica (raftmem/indexing/DESIGN.md):

    filters    the search filter language: parse, evaluate, push down
    queue      changes waiting: coalescing, tiers, the watermark, adaptive batches
    replica    one replica's text and vector indexes: absorb, recover, rebuild
    engines    one replica's engines (tantivy, usearch) behind one interface
    host       the node's engine host process the engines run in, and its proxy
    search     one shard's part of a search over those indexes
    summaries  namespace summaries with stale flags
    embedder   server-side embedding (OpenAI-compatible)
    manager    the node's indexes, and what the service asks of them
    metrics    write amplification and the queues, for /metrics

The engines sit behind one module each: raftmem.textindex (tantivy) and
raftmem.vectorindex (usearch).
"""
