"""Replication: the commands of the Raft log, the state machine they drive, the
pysyncobj bridge that commits them, and the ``ClusterHooks`` built on it."""
