"""What makes raftmq nodes one broker, and the CLI that assembles a node."""
