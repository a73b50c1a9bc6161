"""raftmem for agent frameworks, each an optional dependency behind one module:

    mcp        `pip install 'raftmem[mcp]'`: raftmem as a Model Context Protocol
               server (`raftmem mcp`), the only module that imports `mcp`
    langgraph  `pip install 'raftmem[langgraph]'`: `RaftmemStore` and
               `AsyncRaftmemStore`, LangGraph `BaseStore`s, the only module that
               imports `langgraph`

Both are clients of the HTTP API through `raftmem.client`; neither imports
anything of the server. Importing this package imports neither framework.
"""
