"""One raftmq broker node: MQTT codec, sessions, topic index and listeners."""
