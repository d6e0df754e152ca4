"""``raftmq config from-mosquitto``: a Mosquitto 2.x config as the equivalent raftmq config.

``reader`` turns the files into directive lines, ``walk`` replays Mosquitto's
rules of scope on them, ``mapping`` decides the raftmq keys, ``directives``
holds the answer for every directive raftmq does not map, and ``convert``
ties them together and writes the TOML. None of them touches the file
system: the caller hands in a ``ConfigSource``.
"""
