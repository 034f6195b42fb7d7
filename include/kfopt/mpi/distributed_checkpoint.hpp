#pragma once
/// \file distributed_checkpoint.hpp
/// \brief Checkpoints of a data-parallel run: one file, written by one rank, read by one rank
/// and handed to all, restored on every rank or on none.
///
/// Needs both optional targets, kfopt::mpi and kfopt::checkpoint (MPI and HDF5).
///
/// \code
///   kfopt::mpi::Communicator comm;
///   kfopt::Checkpoint ck;
///   ck.set("model", kfopt::parameters_state_dict(params));
///   ck.set("optimizer", kfac.state_dict());
///   kfopt::mpi::save_checkpoint(comm, "run.h5", ck);        // rank 0 writes; all return or all throw
///   ...
///   const kfopt::Checkpoint in = kfopt::mpi::load_checkpoint(comm, "run.h5");  // rank 0 reads
///   kfopt::mpi::restore(comm, in, "model", params);         // every rank, or none
///   kfopt::mpi::restore(comm, in, "optimizer", kfac);
/// \endcode
///
/// **Why one writer.** Data-parallel training keeps every rank's parameters and optimizer
/// state bit-for-bit identical (DataParallelGradients, DistributedKfac), so one copy is the
/// whole state. The root writes it with kfopt::save_checkpoint (temporary file, fsync, rename:
/// a crash during a save leaves the previous checkpoint intact). Before it writes, every rank
/// hashes each of its dicts (64-bit FNV-1a over the type, hyperparameters and entries) and
/// compares the hashes with the root's: a rank whose state has drifted from the root's is
/// reported (DistributedSaveOptions::require_identical; off for runs that keep rank-specific
/// state on purpose) instead of being silently represented by the root's copy.
///
/// **Why one reader.** The ranks of a job on several machines need not share a file system:
/// the root reads the file's bytes and broadcasts them (one message of the file's size), and
/// every rank parses them with kfopt::load_checkpoint_image, which checks the checksums as a
/// read from disk does.
///
/// **All ranks or none.** Every function here is collective (every rank calls it with the
/// same arguments, in the same order). A failure on any rank (the root cannot write or read
/// the file, a rank's state differs, a dict does not fit a rank's optimizer) makes the call
/// throw CheckpointError on every rank, with the message of the lowest failing rank prefixed
/// by its number. restore() then leaves every rank's target as it was: a rank whose own
/// restore succeeded puts its previous state back (its own state dict, taken before; the
/// round trip is bit-exact).
///
/// **Cost.** save: the hashes (one pass over the state on every rank), 16 bytes per dict
/// broadcast, two agreements, and the root's write. load: the file's size broadcast once and
/// parsed on every rank. restore: one state dict of the target per rank (the rollback copy)
/// and two agreements.

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "kfopt/core/parameter_block.hpp"
#include "kfopt/core/state_dict.hpp"
#include "kfopt/io/checkpoint.hpp"
#include "kfopt/mpi/communicator.hpp"

namespace kfopt {
namespace mpi {

/// Settings of mpi::save_checkpoint.
struct DistributedSaveOptions {
  /// The rank that writes the file. Default 0.
  int root = 0;
  /// Refuse to save unless every rank's dicts hash to the root's (see the file comment).
  /// Default true.
  bool require_identical = true;
};

namespace detail {

/// 64-bit FNV-1a, continued from `h`.
inline std::uint64_t fnv1a(std::uint64_t h, const void* data, std::size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}
inline std::uint64_t fnv1a(std::uint64_t h, const std::string& s) {
  const std::uint64_t n = s.size();
  return fnv1a(fnv1a(h, &n, sizeof n), s.data(), s.size());
}

/// Hash of everything a dict saves: type, scalar type, hyperparameters, entries (name, type,
/// shape, bytes).
inline std::uint64_t dict_hash(const StateDict& d) {
  std::uint64_t h = 1469598103934665603ull;
  h = fnv1a(h, d.type());
  const int scalar = static_cast<int>(d.scalar_type());
  h = fnv1a(h, &scalar, sizeof scalar);
  for (const auto& kv : d.hyperparameters()) {
    h = fnv1a(h, kv.first);
    h = fnv1a(h, kfopt::to_string(kv.second.value));
  }
  for (const auto& kv : d.entries()) {
    h = fnv1a(h, kv.first);
    const int type = static_cast<int>(kv.second.type);
    h = fnv1a(h, &type, sizeof type);
    for (std::int64_t extent : kv.second.shape) h = fnv1a(h, &extent, sizeof extent);
    h = fnv1a(h, kv.second.bytes.data(), kv.second.bytes.size());
  }
  return h;
}

/// Returns if `ok` on every rank; otherwise throws CheckpointError on every rank with the
/// lowest failing rank's `message`, prefixed by `operation` and that rank's number.
inline void agree_or_throw(Communicator& comm, bool ok, const std::string& message,
                           const char* operation) {
  const int failed = comm.first_rank_where(!ok);
  if (failed >= comm.size()) return;
  std::vector<unsigned char> text;
  if (comm.rank() == failed) text.assign(message.begin(), message.end());
  comm.broadcast_bytes(text, failed);
  throw CheckpointError(std::string(operation) + ": rank " + std::to_string(failed) + " of " +
                        std::to_string(comm.size()) + ": " +
                        std::string(text.begin(), text.end()));
}

}  // namespace detail

/// Saves `checkpoint` to `path` from `options.root` (kfopt::save_checkpoint there, atomic),
/// after checking that every rank's dicts equal the root's (unless
/// `options.require_identical` is false). Collective; returns on every rank once the file is
/// in place, or throws CheckpointError on every rank (the previous file at `path` is then
/// untouched): a rank's dict names or contents differ from the root's, or the root could not
/// write.
inline void save_checkpoint(Communicator& comm, const std::string& path,
                            const Checkpoint& checkpoint, const DistributedSaveOptions& options = {}) {
  constexpr const char* op = "kfopt::mpi::save_checkpoint";
  if (options.require_identical) {
    // The root's dict names and hashes, sent as text, compared with this rank's.
    std::string digest;
    for (const auto& kv : checkpoint.dicts()) {
      digest += kv.first + '\0' + std::to_string(detail::dict_hash(kv.second)) + '\0';
    }
    std::vector<unsigned char> root_digest;
    if (comm.rank() == options.root) root_digest.assign(digest.begin(), digest.end());
    comm.broadcast_bytes(root_digest, options.root);
    std::map<std::string, std::string> root_hashes;
    for (std::size_t i = 0; i < root_digest.size();) {
      const auto field = [&] {
        std::string f;
        while (i < root_digest.size() && root_digest[i] != 0) f += static_cast<char>(root_digest[i++]);
        ++i;
        return f;
      };
      const std::string name = field();
      root_hashes[name] = field();
    }
    std::string differing;
    for (const auto& kv : checkpoint.dicts()) {
      const auto it = root_hashes.find(kv.first);
      if (it == root_hashes.end() || it->second != std::to_string(detail::dict_hash(kv.second))) {
        differing += " '" + kv.first + "'";
      }
    }
    for (const auto& kv : root_hashes) {
      if (!checkpoint.contains(kv.first)) differing += " '" + kv.first + "' (missing here)";
    }
    std::string message;
    if (!differing.empty()) {
      message = "file '" + path + "': this rank's state differs from rank " +
                std::to_string(options.root) + "'s in the dicts" + differing +
                "; data-parallel ranks must hold identical state before a save";
    }
    detail::agree_or_throw(comm, message.empty(), message, op);
  }
  std::string error;
  if (comm.rank() == options.root) {
    try {
      kfopt::save_checkpoint(path, checkpoint);
    } catch (const std::exception& e) {
      error = e.what();
      if (error.empty()) error = "unknown error";
    }
  }
  detail::agree_or_throw(comm, error.empty(), error, op);
}

/// Reads the checkpoint at `path` on `root` and returns it on every rank: the root reads the
/// file's bytes and broadcasts them, every rank parses them (kfopt::load_checkpoint_image:
/// checksums and format checked). Collective; throws CheckpointError on every rank if the
/// root cannot read the file or any rank cannot parse it. Checkpoint::path() is `path`.
inline Checkpoint load_checkpoint(Communicator& comm, const std::string& path, int root = 0) {
  constexpr const char* op = "kfopt::mpi::load_checkpoint";
  std::vector<unsigned char> bytes;
  std::string error;
  if (comm.rank() == root) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      error = "file '" + path + "': cannot open it (missing or unreadable)";
    } else {
      bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      if (in.bad()) error = "file '" + path + "': read error";
    }
  }
  detail::agree_or_throw(comm, error.empty(), error, op);
  comm.broadcast_bytes(bytes, root);
  Checkpoint out;
  try {
    out = load_checkpoint_image(bytes.data(), bytes.size(), path);
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "unknown error";
  }
  detail::agree_or_throw(comm, error.empty(), error, op);
  return out;
}

namespace detail {

/// Runs `apply()` on every rank; if it threw on any rank, runs `roll_back()` on the ranks
/// where it did not and throws CheckpointError on every rank (the lowest failing rank's
/// message).
template <typename Apply, typename RollBack>
void apply_everywhere_or_nowhere(Communicator& comm, Apply&& apply, RollBack&& roll_back) {
  std::string error;
  try {
    apply();
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "unknown error";
  }
  if (!comm.any_rank(!error.empty())) return;
  if (error.empty()) roll_back();
  agree_or_throw(comm, error.empty(), error, "kfopt::mpi::restore");
}

}  // namespace detail

/// `checkpoint.restore(name, target, options)` on every rank, or on none: if it fails on any
/// rank, the ranks where it succeeded load back their previous state, and every rank throws
/// CheckpointError (the lowest failing rank's message). `Target` is an optimizer (anything
/// with state_dict() / load_state_dict()). Collective.
template <typename Target>
void restore(Communicator& comm, const Checkpoint& checkpoint, const std::string& name,
             Target& target, const LoadOptions& options = {}) {
  const StateDict before = target.state_dict();
  detail::apply_everywhere_or_nowhere(
      comm, [&] { checkpoint.restore(name, target, options); },
      [&] { target.load_state_dict(before, LoadOptions{}); });
}

/// The model weights on every rank, or on none (as above, with load_parameters).
template <typename Scalar>
void restore(Communicator& comm, const Checkpoint& checkpoint, const std::string& name,
             ParameterSet<Scalar>& params) {
  const StateDict before = parameters_state_dict(params);
  detail::apply_everywhere_or_nowhere(
      comm, [&] { checkpoint.restore(name, params); },
      [&] { load_parameters(params, before); });
}

}  // namespace mpi
}  // namespace kfopt
