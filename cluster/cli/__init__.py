"""The ``raftmq`` program (``main``) and its subcommands."""
