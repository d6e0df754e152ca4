# Frames exchanged between raftmq nodes over the forwarding stream
# (proto/raftmq.proto: each gRPC message carries one Frame, unpacked encoding).
#
# Loaded once, by raftmq.cluster.frames, and nowhere else.
#
# Evolution: add fields at new ordinals only; never renumber or retype.

@0xb12a096ed749f3cc;

struct Frame {
  seq @0 :UInt64;
  # Position of this frame in the sender's stream, from 1 and without gaps
  # for the lifetime of the sending process. 0 for a frame that carries no
  # items (an acknowledgement only); such frames are not sequenced.

  ack @1 :UInt64;
  # Cumulative acknowledgement: every frame of the receiving side with
  # seq <= ack has been handled (its items handed to the local node). 0: none.

  items @2 :List(Item);
  # Handled in order; publishes, kicks and hand-overs keep their relative order.

  ackIncarnation @3 :UInt64;
  # The incarnation of the receiving node that `ack` counts frames of. A frame
  # resent after the receiver restarted still carries an ack meant for its
  # previous process, which the new one must ignore.

  applied @4 :UInt64;
  # The sender's count of applied Raft commands (ClusterState.applied) when it
  # made the frame. The receiver handles the items once it has applied as many
  # (a bounded wait), so that what the sender sent by state the receiver has
  # not applied yet (a session re-homed there, say) finds that state.
}

struct Item {
  union {
    publish @0 :Publish;
    kick @1 :Kick;
    handover @2 :Handover;
    barrier @3 :Barrier;
    barrierReply @4 :UInt64;
    # The token of a barrier the receiver asked for: the sender has applied the
    # Raft state it named, and everything it forwarded before precedes this item.
  }
}

struct Barrier {
  # Answer with barrierReply(token) once you have applied `applied` commands of
  # the replicated state (ClusterState.applied): from then on you route by the
  # routes committed up to there.
  token @0 :UInt64;
  applied @1 :UInt64;
}

struct Publish {
  # An application message for the receiving node's local subscribers.
  # A forwarded publish is delivered locally only and never forwarded again.
  topic @0 :Text;
  payload @1 :Data;
  qos @2 :UInt8;
  retain @3 :Bool;
  properties @4 :Properties;
  # Null when the message has no properties (the common case).
  sharedGroups @5 :List(SharedGroup);
  # The shared-subscription groups the sender chose this node to serve for
  # this message. The node's non-shared subscribers always get it.
  originSeq @6 :UInt64;
  # The message's sequence number on the node it was published on (the
  # sender, for a forwarded publish); 0 when it has none.
}

struct SharedGroup {
  group @0 :Text;
  topicFilter @1 :Text;
}

struct Properties {
  # The MQTT 5 message properties that travel with a message. Per-hop ones
  # (topic alias, subscription identifiers) never do.
  expiry :union {
    none @0 :Void;
    remainingMs @1 :UInt64;
    # What is left of the message expiry interval when the frame was built.
  }
  payloadFormat :union {
    none @2 :Void;
    indicator @3 :UInt8;
  }
  contentType :union {
    none @4 :Void;
    value @5 :Text;
  }
  responseTopic :union {
    none @6 :Void;
    value @7 :Text;
  }
  correlationData :union {
    none @8 :Void;
    value @9 :Data;
  }
  userProperties @10 :List(UserProperty);
}

struct UserProperty {
  key @0 :Text;
  value @1 :Text;
}

struct Kick {
  # The client id is now owned elsewhere at `epoch`: disconnect any older
  # connection of it here (MQTT 5 reason 0x8E, session taken over).
  clientId @0 :Text;
  epoch @1 :UInt64;
}

struct Handover {
  # A persistent session's messages, moved from its previous owner to the
  # node that claimed the client id at `epoch`.
  clientId @0 :Text;
  epoch @1 :UInt64;
  queued @2 :List(Delivery);
  # Not yet sent to the client, oldest first.
  outgoing @3 :List(Outgoing);
  # Sent at QoS 1/2 and not yet completed by the client.
  incomingQos2 @4 :List(UInt16);
  # Packet ids of QoS 2 publishes from the client awaiting its PUBREL.
  seen @5 :List(OriginMark);
  # Per origin node, the highest sequence the sender had received when it let go.
  late @6 :Bool;
  # Sent after the first hand-over of this claim (what the sender caught later,
  # or held across its own restart): added to the session as it is then, never
  # taken for the hand-over a resuming CONNECT waits for.
}

struct OriginMark {
  node @0 :Text;
  seq @1 :UInt64;
}

struct Delivery {
  message @0 :Publish;
  qos @1 :UInt8;
  # Granted to this subscriber (at most the message's).
  retain @2 :Bool;
  # As delivered (retain-as-published applied).
  subscriptionIds @3 :List(UInt32);
  origin @4 :Text;
  # The node the message was published on (with message.originSeq, its identity).
}

struct Outgoing {
  packetId @0 :UInt16;
  released @1 :Bool;
  # QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
  delivery @2 :Delivery;
}
