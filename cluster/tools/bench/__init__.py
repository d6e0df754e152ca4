"""``raftmq bench``: a load generator that is not the bottleneck.

A Python benchmark of a Python broker is only worth reading if the generator
has headroom to spare, so the clients are raw asyncio Protocols on uvloop,
spread over several spawned processes, with no MQTT library and no task per
message (see ``client``). The parent process runs no client: it starts the
workers, releases them all at once after every client is connected, prints
progress and decides when the run is over (``runner``).

Usage::

    raftmq bench pairs --clients 10 --messages 10000 --qos 0 --port 1883
    raftmq bench latency --rate 20000 --duration 10 --qos 1
    raftmq bench conns --clients 10000 --broker-pid "$(pidof mosquitto)"
    raftmq bench ceiling --clients 10 --messages 100000 --processes 1

What the figures mean:

- delivered msgs/s, the headline: distinct messages delivered, divided by
  the time from the first publish (any process) to the last delivery (any
  process). Both instants are CLOCK_MONOTONIC, which all processes share.
- Every payload starts with (publisher index, sequence, send time). Each
  subscriber checks every message off per publisher: lost (sent by the
  publisher, never delivered), duplicates, and out of order (arrived after
  a later message of the same publisher). A rate with losses says so, and
  the exit status is 0 only for a complete run where all are zero.
- latency: receive time minus the time in the payload, per message. At a
  fixed ``--rate`` that time is when the pacer released the message, so a
  message the QoS window held back counts its wait (no coordinated
  omission); ``--json`` adds ``latency_cdf_ms``, the percentiles every 1 %
  plus 99.5, 99.9, 99.99 and the maximum, enough to draw the distribution.
- QoS 1/2 publishers keep ``--inflight`` messages in flight (default 20).
  That is Mosquitto's ``max_inflight_messages``, and Mosquitto enforces it
  on MQTT 3.1.1 publishers by answering QoS 2 messages beyond it with a
  PUBREC and dropping them (3.1.1 PUBREC cannot carry its "quota exceeded").
  MQTT 5 publishers follow the broker's Receive Maximum.

Side by side with other brokers: ``scripts/bench-compare.sh`` (see
``compare`` and ``suite``) runs the same cases against Mosquitto, amqtt and
raftmq, interleaved, median of 3, and ``--all`` writes BENCHMARKS.md and its
charts.

Across the nodes of a cluster: ``--sub-host/--sub-port`` put the subscribers
on another node than the publishers; the run starts once a probe published
at the publishers' node reached every subscriber (SUBACK comes before the
publishers' node has applied the route), and probes are counted nowhere.
``--target HOST:PORT``, repeated, spreads ``conns`` and ``connect-rate``
clients round-robin over nodes. ``scripts/bench-cluster.sh`` (see
``cluster_compare``) measures same-node and cross-node figures of a 3-node
cluster beside one node and Mosquitto.

The generator's ceiling, ``ceiling`` (``pairs`` at QoS 0 against the
in-process sink of ``sink``, which relays bytes without parsing them, so
the whole publish, receive and check path of the generator is measured),
on the reference machine (2 vCPU AMD EPYC, Python 3.11, uvloop 0.23,
shared with other work), 10 publishers -> 10 subscribers, 100,000 messages
each, 64-byte payloads, median of 5::

    raftmq bench ceiling --clients 10 --messages 100000 --processes 1   ~540,000 msgs/s
    raftmq bench ceiling --clients 10 --messages 100000 --processes 2   ~990,000 msgs/s

With one process, publishing and receiving share one core. Against
Mosquitto 2.0.11 on the same machine, ``pairs`` 10 -> 10 at QoS 0 delivers
~75-85 k msgs/s while the generator process uses about a third of a core.
Connection scenarios are heavier per operation: ``conns`` and
``connect-rate`` reach ~5-7 k connections/s per process, most of it in the
kernel's TCP setup on both ends, so give them more processes on a machine
with the cores for it.
"""
