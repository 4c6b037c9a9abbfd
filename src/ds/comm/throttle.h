// A throttled communicator: any communicator made to behave as if each rank's network link had a given bandwidth
// and per-message latency, so the gain of compressed communication can be measured on one machine, where the
// local and shared-memory MPI transports are far faster than a network (Note [Throttled link]).
//
// Note [Throttled link]
// Each collective is first run by the wrapped communicator (the data moves as before); the rank's link then stays
// busy for the time the collective would take on the modelled network, and the Work completes after that:
//   time = hops * latency + bytes / bandwidth,
// with `bytes` what this rank sends under Note [Traffic accounting] (the ring convention of the byte counters; a
// recv waits as long as its send) and `hops` the ring's message steps: 2(W-1) for all_reduce, W-1 for
// reduce_scatter, all_gather, all_to_all(v) and broadcast (a pipelined chain), 1 for send and recv, and
// ceil(log2 W) for a barrier. The link is the rank's: communicators split from a throttled one share it, and its
// transfers run one after another in issue order on a thread of their own, so an asynchronous collective's link
// time overlaps the caller's computation, and two collectives in flight take the sum of their times. Link time
// starts once the wrapped collective has completed, i.e. once every rank has arrived, as a real transfer would.
#pragma once

#include <memory>
#include <string>

#include "ds/comm/communicator.h"

namespace ds::comm {

struct LinkModel {
  double bandwidth = 0;  // bytes per second of each rank's link; 0: unlimited
  double latency = 0;    // seconds per message hop
  // Ranks per node (consecutive world ranks): a communicator split within one node is not throttled, as a node's
  // own links are far faster than the network. 0: every rank is a node of its own.
  int node_size = 0;
};

// Parses "<bandwidth>[,<latency>]", e.g. "1gbit", "10gbit,100us", "100mbit,1ms", "1.5GB,20us": bandwidth in
// bit/s (kbit, mbit, gbit) or bytes/s (kB, MB, GB), latency in s, ms or us. ConfigError naming the accepted forms
// when the text is none of them. node_size stays 0.
LinkModel parse_link_model(const std::string& text);
std::string describe(const LinkModel& link);  // "1 Gbit/s, 100 us"

// The modelled seconds of one collective of `bytes` sent by this rank in a world of W.
double link_seconds(Collective c, int world, int64_t bytes, const LinkModel& link);

// Wraps `inner` (which must outlive the result), whose ranks are the world's. Its CommStats count as any
// communicator's; link_busy_seconds() is the modelled link time of everything this rank sent so far, over every
// communicator split from it (those within one node, with link.node_size, take none).
class ThrottledCommunicator;
std::unique_ptr<ThrottledCommunicator> make_throttled(Communicator& inner, const LinkModel& link);

class ThrottledCommunicator : public Communicator {
 public:
  virtual double link_busy_seconds() const = 0;
};

}  // namespace ds::comm
