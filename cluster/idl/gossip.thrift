// meridian gossip wire format: the values of cluster/include/meridian/cluster/messages.h,
// encoded with Thrift's compact protocol and then sealed (see wire.h).
//
// Rolling upgrades mix versions in one cluster, so this file is append-only:
//   * field ids are pinned: never renumber, never reuse an id, never change a field's type;
//   * new fields get new ids and default requiredness (never `required`), so older nodes skip
//     them and newer nodes see them unset;
//   * anything else is an incompatible change: bump PROTOCOL_VERSION (and protocol_version in
//     messages.h), which makes old and new nodes refuse each other's packets cleanly.
// tests/unit/cluster/wire_test.cc pins the exact bytes (golden tests); they must keep passing.
//
// Thrift has no unsigned integers: u64 values travel as i64 and u16 as i16, bit for bit.

namespace cpp meridian.cluster.gen

const i16 PROTOCOL_VERSION = 1

struct member_info {
  1: string id,       // never renumber
  2: string address,  // never renumber; "host:port"
  3: string region,   // never renumber
  4: string zone,     // never renumber
}

struct member_update {
  1: member_info member,   // never renumber
  2: i64 incarnation,      // never renumber; u64 on the C++ side
  // never renumber. member_state: 0 alive, 1 suspect, 2 dead, 3 left (never reassign a value).
  // An i8 rather than a Thrift enum on purpose: the C++ generator casts any received i32 into the
  // enum type, which is undefined behaviour for values outside it; an i8 is checked in wire.cc.
  3: i8 state,
  4: string from_id,       // never renumber; `from` in messages.h (a keyword in some generators)
}

struct ping {
  1: i64 seq,           // never renumber
  2: string target_id,  // never renumber
}

struct ping_req {
  1: i64 seq,                // never renumber
  2: string target_id,       // never renumber
  3: string target_address,  // never renumber
}

struct ack {
  1: i64 seq,               // never renumber
  2: optional i64 wall_ms,  // never renumber; the acker's wall clock (Unix ms), direct acks only
}

struct nack {
  1: i64 seq,  // never renumber
}

// Replay protection (replay_guard.h): sender's wall clock (Unix ms), a random id of its process
// life, and a per-life, per-channel sequence number. u64 values as i64, bit for bit.
struct send_stamp {
  1: i64 sent_ms,  // never renumber
  2: i64 boot,     // never renumber
  3: i64 seq,      // never renumber
}

// One UDP datagram. version stays field 1 so a reader can check it before anything else.
// The lists are optional and left out when empty (most datagrams carry one or two of them):
// absent reads as empty, so this is only a size saving, and membership's estimate_size counts on it.
struct packet {
  1: i16 version,                              // never renumber
  2: string sender_id,                         // never renumber
  3: string sender_address,                    // never renumber
  4: optional list<ping> pings,                // never renumber
  5: optional list<ping_req> ping_reqs,        // never renumber
  6: optional list<ack> acks,                  // never renumber
  7: optional list<nack> nacks,                // never renumber
  8: optional list<member_update> updates,     // never renumber
  9: optional list<binary> payloads,           // never renumber; opaque application messages
  10: optional binary summary,                 // never renumber; application state digest
  11: optional send_stamp stamp,               // never renumber; absent: unstamped
  // never renumber; application messages for the receiver alone (not relayed, not deduplicated):
  // strict rate-limit requests and answers (strict_batch). Older nodes skip the field.
  12: optional list<binary> direct,
}

// Push-pull anti-entropy over TCP. version stays field 1, as in packet.
struct state_sync {
  1: i16 version,                     // never renumber
  2: string sender_id,                // never renumber
  3: bool join,                       // never renumber
  4: list<member_update> members,     // never renumber
  5: binary app_state,                // never renumber; opaque application state
  6: optional send_stamp stamp,       // never renumber; absent: unstamped
}

// ---- replicated state (replicated_state.h). These travel inside packet.payloads and
// state_sync.app_state, each starting with its own version field. ----

// One version of a document. family: 0 config, 1 state (never reassign a value).
struct doc_entry {
  1: i8 family,      // never renumber
  2: string key,     // never renumber
  3: i64 version,    // never renumber; hlc_time
  4: string origin,  // never renumber
  5: bool deleted,   // never renumber
  6: binary value,   // never renumber
}

// Which version of a document a node holds (no value).
struct doc_version {
  1: i8 family,      // never renumber
  2: string key,     // never renumber
  3: i64 version,    // never renumber
  4: string origin,  // never renumber
}

// A delta, piggybacked as one packet payload: documents a node wrote and the node's own
// counter slots. Documents too large for a datagram travel as notices and are pulled by push-pull.
struct state_delta {
  1: i16 version,                       // never renumber
  2: string origin,                     // never renumber; the node whose counter slots these are
  3: i64 clock,                         // never renumber; origin's hybrid clock when sent
  4: optional list<doc_entry> docs,     // never renumber
  5: optional binary counters,          // never renumber; pack_counter_updates (crdt.h)
  6: optional list<doc_version> notices,  // never renumber
}

// The app_state of a push-pull. The asker sends its digests and, when they are not the
// responder's, what it holds (`have`, small states) or bucket digests (`buckets`, any size), plus
// documents it knows the responder lacks (`docs`) and ones it wants (`want`); the reply carries
// what the asker lacks and the versions of differing buckets (up to a byte budget).
struct state_sync_app {
  1: i16 version,                    // never renumber
  2: i64 config_digest,              // never renumber
  3: i64 breaker_digest,             // never renumber
  4: i64 clock,                      // never renumber
  5: optional list<doc_version> have,  // never renumber
  6: optional list<doc_entry> docs,    // never renumber
  7: bool complete,                  // never renumber; reply: false when the budget cut it short
  // Bucketed anti-entropy (any state size; replicated_state.cc explains the exchange). An asker
  // whose version list would not fit one message sends `buckets` instead of `have`; nodes that
  // predate these fields ignore them (and answer as if the asker held nothing, within budget).
  8: optional list<binary> buckets,      // never renumber; request: per family, 2^k 4-byte digests
  9: optional list<doc_version> want,    // never renumber; request: documents asked for, with the
                                         // asker's own version (version 0 and no origin: absent)
  10: optional list<doc_version> versions,  // never renumber; reply: all versions of listed buckets
  11: optional list<i32> listed,         // never renumber; reply: family << 20 | k << 16 | bucket
  12: optional list<i64> sizes,          // never renumber; documents per family (tombstones too)
}

// ---- strict rate limits (node/traffic/include/meridian/traffic/strict_limiter.h). A strict_batch
// travels as one packet.direct entry: a node asks the owner of keys for decisions, and the owner
// answers in a batch of its own. ----

struct strict_request {
  1: i32 id,                    // never renumber; the asker's, echoed in the answer
  2: i64 key,                   // never renumber; the counter key (rate_limiter::key_of), u64
  3: i64 limit,                 // never renumber
  4: i64 window_ms,             // never renumber
  // never renumber; 1 sliding, 2 region scope, 4 calendar month, 8 a count query (answer what
  // you know of the key's count; decide nothing)
  5: i8 flags,
  6: optional string timezone,  // never renumber; calendar months only
  7: optional i32 timeout_ms,    // never renumber; how long the asker waits (the owner waits less)
}

struct strict_answer {
  1: i32 id,              // never renumber
  // never renumber. 0 admitted, 1 refused, 2 not the owner (or no quorum), 3 handing over,
  // 4 counted (the answer to a count query) (never reassign a value; an i8, checked where
  // decoded, as member_update.state).
  2: i8 result,
  3: i64 remaining,       // never renumber
  4: i64 reset_ms,        // never renumber; until the window ends
  5: i64 retry_after_ms,  // never renumber; refused: when to come back
  6: optional i64 count,  // never renumber; counted: the key's count in `window`, all nodes
  7: optional i32 window,  // never renumber; counted: the window number it is for
}

// A node's count of a key in a window (its slot of the replicated window counters): an owner's
// after it admitted, sent to every member (and acknowledged by a majority) before the admission
// goes on; or any node's, in the answer to a count query.
struct strict_count {
  1: i64 key,        // never renumber; u64
  2: i32 window_ms,  // never renumber; u32, the counters' window length
  3: i32 window,     // never renumber; u32
  4: i32 count,      // never renumber; u32
  5: optional string origin,  // never renumber; whose slot; absent: the sender's
}

struct strict_batch {
  1: i16 version,                            // never renumber
  2: optional list<strict_request> requests,  // never renumber
  3: optional list<strict_answer> answers,    // never renumber
  4: optional list<strict_count> counts,      // never renumber
  5: optional i64 ack_seq,                    // never renumber; acknowledge these counts with it
  6: optional list<i64> acks,                 // never renumber; ack_seqs acknowledged
}
