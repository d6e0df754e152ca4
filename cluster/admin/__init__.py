"""The admin service of a node (``Status``, ``NodeDown``), its client and its commands
(``raftmq cluster status``, ``raftmq cluster node-down``)."""
