"""The `raftmem` admin CLI: an HTTP client of the nodes, never an importer of server internals
(`serve` is the one exception: it runs a node)."""
