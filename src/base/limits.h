// Every bound of imgstream in one place (TigerBeetle's "put a limit on everything"): each
// queue, retry, request size and count a peer or a file can make us hold, with why it is
// that value, and static_asserts where bounds relate. The modules' headers name these
// (`inline constexpr ... kFetchBytesMax = limits::kFetchBytesMax;`) so that their code
// reads as before; change a bound here, never there.
//
// Not here: the layout of the on-disk and wire formats (header and record sizes, field
// offsets: docs/*-format.md, beside their codecs), the fingerprint's sample sizes (they
// define the fingerprint a store records), and defaults a user can change (--batch, ...).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace imgstream::limits {

using std::chrono::milliseconds;

// --- base ----------------------------------------------------------------------------

// MemEnv's largest file size and write end (EFBIG beyond): offsets cannot overflow off_t.
inline constexpr uint64_t kMemEnvFileSizeBytesMax = uint64_t{1} << 62;
// MemEnv's path components and paths, as Linux's NAME_MAX and PATH_MAX (ENAMETOOLONG).
inline constexpr size_t kMemEnvNameBytesMax = 255;
inline constexpr size_t kMemEnvPathBytesMax = 4096;
// Open descriptors looked at in /proc when naming who holds an image's lock.
inline constexpr size_t kHolderScanFdsMax = size_t{1} << 16;
// Output of a program we run (e2fsck, e2image) kept for its message; the rest is dropped.
inline constexpr size_t kProgramOutputMax = 64 * 1024;

// --- io, control ---------------------------------------------------------------------

// A control command line, its newline included: every command is a few words.
inline constexpr size_t kControlCommandBytesMax = 4096;
// A control reply: status and info objects are a few KiB; 1 MiB leaves room for lists.
inline constexpr size_t kControlReplyBytesMax = 1 << 20;
// The longest hold a cutover may ask (10 min): a machine's I/O is never held for longer.
inline constexpr uint64_t kHoldMsMax = 600'000;
// Regions one `take` hands out at most, whatever the request asks.
inline constexpr uint64_t kTakeMax = 1u << 20;
// Connections migrate may ask of a target (--connections), at most.
inline constexpr uint64_t kMigrateConnectionsMax = 64;
// The migration state file is a few fields; a larger file is not ours (read_state).
inline constexpr uint64_t kMigrationStateBytesMax = 4096;

// --- nbd: the server -----------------------------------------------------------------

// Bounds on what a client may make us hold during the handshake: one option's payload,
// options per connection, meta-context queries, and a string (the protocol's limit).
inline constexpr uint32_t kNbdOptionBytesMax = 64 * 1024;
inline constexpr uint32_t kNbdOptionsPerConnectionMax = 1024;
inline constexpr uint32_t kNbdMetaQueriesMax = 128;
inline constexpr uint32_t kNbdStringBytesMax = 4096;
// The largest READ / WRITE payload accepted: NBD's customary maximum.
inline constexpr uint32_t kNbdPayloadMax = 32u << 20;
// A connection's receive buffer: a write payload up to this (less its header) is used in place.
inline constexpr size_t kNbdRecvBufferBytes = 2u << 20;
// One batch of requests handed to the device: at most this many bytes and requests.
inline constexpr size_t kNbdBatchBytesMax = 4u << 20;
inline constexpr size_t kNbdBatchRequestsMax = 512;
// Requests of one connection in flight at once.
inline constexpr size_t kNbdInflightMax = 256;
// Payload bytes one connection holds: two 32 MiB requests, or 64 1-MiB reads (8x what
// fio's QD 8 sequential row keeps in flight).
inline constexpr size_t kNbdConnectionBytesMax = 64u << 20;
// Asked of the kernel for a unix socket's send buffer: 1 MiB reads at QD 8/32 were bound
// by the default 208 KiB (server.cc).
inline constexpr size_t kNbdSendBufferBytes = 4u << 20;
// Replies gathered into one sendmsg() (well under IOV_MAX, 1024).
inline constexpr size_t kNbdSendIovMax = 64;
// Clients served at once by one server (one thread each).
inline constexpr unsigned kNbdServerConnectionsMax = 256;
// Clients beyond that told why at once; more are closed without a word, so that a flood
// cannot make threads without bound.
inline constexpr unsigned kNbdRefusalsMax = 16;

// --- store ---------------------------------------------------------------------------

// The header's strings (source URI, ...): two fit the 4 KiB header (store_format.h).
inline constexpr size_t kStoreStringBytesMax = 1024;
// The error message a slot keeps: one line is enough to say why.
inline constexpr size_t kStoreErrorMessageBytesMax = 256;
// Region sizes: a page at the least, 1 GiB at most (one bit of the bitmap each).
inline constexpr uint32_t kStoreRegionBytesMin = 4096;
inline constexpr uint32_t kStoreRegionBytesMax = 1u << 30;
// Regions of one store: 512 MiB of bitmap at most.
inline constexpr uint64_t kStoreRegionsMax = 1ULL << 32;
// A slot's largest generation (2^62 commits, a thousand a second, take 146 million
// years); a slot claiming more is corrupt, so the next generation never wraps to 0.
inline constexpr uint64_t kSlotGenerationMax = 1ULL << 62;

// --- source, blob --------------------------------------------------------------------

// The largest read sent as one NBD command: servers that advertise no maximum may drop
// the connection above 32 MiB (nbd_get_block_size(3)); a smaller advertised one wins.
inline constexpr uint64_t kNbdRequestBytesMax = 32u << 20;
// The largest range of one block-status command: lengths are 32-bit, and a power of two
// stays aligned to any minimum block size.
inline constexpr uint64_t kNbdBlockStatusBytesMax = 1u << 30;
// Requests an NBD source keeps in flight per connection, at most (each holds a buffer).
inline constexpr uint32_t kNbdMaxInFlightMax = 1024;
// Connections of an NBD source, at most: servers limit clients (qemu-nbd takes one).
inline constexpr unsigned kNbdSourceConnectionsMax = 16;
// Backoff between reconnection attempts: doubles from min to max, jittered.
inline constexpr milliseconds kNbdReconnectBackoffMin{50};
inline constexpr milliseconds kNbdReconnectBackoffMax{2000};
// Delay before a request the server failed is sent again: doubles from min to max.
inline constexpr milliseconds kNbdRetryDelayMin{10};
inline constexpr milliseconds kNbdRetryDelayMax{1000};
// Extents one FileSource block_status appends: a badly fragmented file answers quickly.
inline constexpr size_t kFileSourceExtentsMax = 1024;
// HTTP easy handles (each with its connection) per reader, whatever BlobOptions asks.
inline constexpr unsigned kHttpConnectionsMax = 64;
// Connections one easy handle keeps open: the object's host and one redirect target.
inline constexpr long kHttpCachedConnectionsPerHandleMax = 2;
// Redirects followed per request (object stores and CDNs redirect once or twice).
inline constexpr long kHttpRedirectsMax = 5;
// The longest backoff between HTTP attempts: a read's timeout still holds several.
inline constexpr milliseconds kHttpBackoffMax{2'000};
// No HTTP attempt is started with less time than this left before the read's deadline.
inline constexpr milliseconds kHttpAttemptTimeMin{20};
// An error response's body is read (so the connection is reused) up to this; never kept.
inline constexpr size_t kHttpErrorBodyBytesMax = 64 * 1024;
// Header values kept (ETag, Last-Modified, the reason phrase) are cut to this length.
inline constexpr size_t kHttpHeaderValueBytesMax = 256;

// --- profile -------------------------------------------------------------------------

// Regions of a profile: 16M, a 64 GiB boot set at 4 KiB regions (a 512 MiB file).
inline constexpr uint64_t kProfileRegionsMax = uint64_t{1} << 24;
// Traces one merge takes at most.
inline constexpr size_t kProfileTracesMax = 1u << 16;
// Region sizes of profiles and traces: as a store's.
inline constexpr uint32_t kProfileRegionSizeMin = 4096;
inline constexpr uint32_t kProfileRegionSizeMax = 1u << 30;
// Records of one trace block: a block is written about every 100 ms.
inline constexpr uint32_t kTraceBlockRecordsMax = 4096;
// Records waiting in memory beyond this are dropped (and counted): a stalled disk never
// makes the writer grow without bound. 1M records = 24 MiB.
inline constexpr size_t kTraceBufferedRecordsMax = size_t{1} << 20;
// The largest trace read (about 178M records).
inline constexpr uint64_t kTraceFileBytesMax = uint64_t{4} << 30;

// --- pack ----------------------------------------------------------------------------

// Chunk sizes: a page at the least; 16 MiB at most (a chunk is read and decompressed whole).
inline constexpr uint32_t kChunkBytesMin = 4096;
inline constexpr uint32_t kChunkBytesMax = 16u << 20;
// Chunks of one pack (4 TiB at the default 128 KiB): a reader holds the whole index, so
// this bounds what a hostile pack can make it hold (pack_format.h says how much).
inline constexpr uint64_t kChunksMax = 1ULL << 24;
// A base hint (the base pack's name or URL).
inline constexpr size_t kBaseHintBytesMax = 1024;
// Packs of a chain: a pack, its base, its base's base...
inline constexpr size_t kChainDepthMax = 16;
// Chunk counts of a chain's packs added up: no hostile chain runs a reader through more
// than four of the largest indexes.
inline constexpr uint64_t kChainChunksMax = 4 * kChunksMax;
// The index decoder's window, 2^this bytes (level 3 uses 2 MiB, levels up to 19 8 MiB).
inline constexpr int kIndexWindowLogMax = 24;
// The boot set is fetched in one request when it is at most this large.
inline constexpr uint64_t kBootFetchBytesMax = 256u << 20;
// One blob request that coalesces adjacent chunks reads at most this much.
inline constexpr uint64_t kCoalesceBytesMax = 64u << 20;

// --- migrate -------------------------------------------------------------------------

// Round 0 copies in pieces of this size: with 4 MiB pieces round 0 of bench/migrate.sh
// took 6-9 s under load, with 1 MiB pieces 3.2-3.4 s (migrator.h).
inline constexpr uint64_t kCopyPieceBytes = 1u << 20;
// What is left to copy when a cutover starts anyway: always small enough to hold for.
inline constexpr uint64_t kConvergeMinBytes = 4u << 20;
// Round 0's segments, sized to the pace measured, within these bounds.
inline constexpr uint64_t kBaselineSegmentBytesMin = 4u << 20;
inline constexpr uint64_t kBaselineSegmentBytesMax = 256u << 20;
// Regions one take asks of the tracker at most.
inline constexpr size_t kTakeRegionsMax = 4096;
// One WRITE_ZEROES to a target asks for at most this (servers split it as they like),
inline constexpr uint64_t kZeroPieceBytes = 1u << 30;
// and one WRITE at most this: servers' usual limit.
inline constexpr uint64_t kWritePieceBytes = 32u << 20;
// Bytes in flight per target connection: a few pieces, a few MiB in buffers at most.
inline constexpr uint64_t kPipelineBytes = 1u << 20;
// The mirror's copier moves this much in one piece: large enough for the link, small
// enough that a machine's write to the same regions waits for it only briefly.
inline constexpr uint64_t kCopyRunBytes = 1u << 20;
// Region sizes of a tracking file; regions of one (as a store's).
inline constexpr uint32_t kTrackRegionBytesMin = 4096;
inline constexpr uint32_t kTrackRegionBytesMax = 64u << 20;
inline constexpr uint64_t kTrackRegionsMax = 1ULL << 32;

// --- stream --------------------------------------------------------------------------

// One fetch piece (one source request): the hydrator's default batch (--batch 8M), small
// enough that demand reads share the budget (streaming_device.h).
inline constexpr uint64_t kFetchBytesMax = 8u << 20;
// Bytes a streaming device holds in fetch buffers at once, demand and background.
inline constexpr uint64_t kFetchBudgetBytes = 64u << 20;
// Background fetches never take these: a demand piece always finds room beside them.
inline constexpr uint64_t kFetchDemandReserveBytes = 2 * kFetchBytesMax;
// NBD_CMD_CACHE ranges waiting for the cache thread; one more is dropped (it is a hint).
inline constexpr size_t kCacheRangesMax = 64;
// Pieces the cache thread has in flight at most.
inline constexpr unsigned kCacheWindowsInFlightMax = 4;
// A sequential reader is read ahead by this much (bench/stream.sh row 1).
inline constexpr uint64_t kReadaheadBytes = 4u << 20;
// Sequential streams followed at once (a few readers at different places).
inline constexpr size_t kReadStreamsMax = 4;
// Retries of a request whose regions keep being claimed or keep failing to land.
inline constexpr int kClaimRoundsMax = 64;
// Extents one block-status answer of the streaming device holds: base:allocation (its
// local runs asked of the file this many at a time), and the present context. The
// client asks again for the rest.
inline constexpr size_t kStatusAllocationExtentsMax = 1024;
inline constexpr size_t kStatusLocalRunExtentsMax = 64;
inline constexpr size_t kStatusPresentExtentsMax = 4096;
// Hydration requests in flight at most.
inline constexpr unsigned kHydratorInFlightMax = 64;
// The longest wait before hydration tries a failed source again (1 s, doubling).
inline constexpr milliseconds kRetryBackoffMax{60'000};
// Block status is asked of the source a GiB at a time (one command at its largest).
inline constexpr uint64_t kHoleWindowBytes = 1ULL << 30;
// A machine busy this long still gets one hydration batch: hydration never starves.
inline constexpr milliseconds kBusyHoldMax{60'000};
// Partitions of an image's table the fingerprint looks at, at most.
inline constexpr size_t kFingerprintPartitionsMax = 16;

// --- cli -----------------------------------------------------------------------------

// Runs `track show` and `profile show` list before "... and N more".
inline constexpr size_t kTrackShowRunsMax = 64;
inline constexpr size_t kProfileShowRunsMax = 20;
// Ticks without an answer from a streamer that answered before (busy, or stopped by
// SIGSTOP) after which `status --watch` gives up.
inline constexpr unsigned kWatchSilentTicksMax = 10;

// --- how they relate -----------------------------------------------------------------

static_assert(kMemEnvNameBytesMax < kMemEnvPathBytesMax);
static_assert(kNbdStringBytesMax <= kNbdOptionBytesMax, "a string fits one option");
static_assert(kNbdConnectionBytesMax >= 2 * uint64_t{kNbdPayloadMax},
              "a connection holds two of the largest requests");
static_assert(kNbdRequestBytesMax <= UINT32_MAX && kNbdBlockStatusBytesMax <= UINT32_MAX,
              "NBD lengths are 32-bit");
static_assert(kNbdRequestBytesMax <= kNbdPayloadMax,
              "a source read is one a server (ours too) accepts");
static_assert(kWritePieceBytes <= kNbdPayloadMax && kCopyPieceBytes <= kWritePieceBytes &&
                  kCopyRunBytes <= kWritePieceBytes,
              "a copy piece is one WRITE a target accepts");
static_assert(kMigrateConnectionsMax <= kNbdServerConnectionsMax,
              "migrate's connections fit one of our servers");
static_assert(kTakeRegionsMax <= kTakeMax, "what migrate takes is one take");
static_assert(kBaselineSegmentBytesMin >= kCopyPieceBytes &&
              kBaselineSegmentBytesMin <= kBaselineSegmentBytesMax);
static_assert(kStoreRegionBytesMin <= kStoreRegionBytesMax &&
              kTrackRegionBytesMin <= kTrackRegionBytesMax &&
              kProfileRegionSizeMin <= kProfileRegionSizeMax && kChunkBytesMin <= kChunkBytesMax);
static_assert(kNbdReconnectBackoffMin <= kNbdReconnectBackoffMax &&
              kNbdRetryDelayMin <= kNbdRetryDelayMax);
static_assert(kTraceBufferedRecordsMax >= 4 * kTraceBlockRecordsMax,
              "a few blocks wait before records are dropped");
static_assert(kChainChunksMax >= kChunksMax, "a chain holds at least its largest pack");
static_assert(kCoalesceBytesMax >= kChunkBytesMax, "a coalesced read holds a chunk");
static_assert(kFetchBytesMax <= kNbdRequestBytesMax, "a fetch piece is one source request");
static_assert(kFetchDemandReserveBytes >= kFetchBytesMax,
              "a demand piece must fit beside all background fetches");
static_assert(kFetchBudgetBytes >= kFetchDemandReserveBytes + kFetchBytesMax,
              "background fetches must have room for at least one piece");
static_assert(kReadaheadBytes <= kFetchBytesMax, "a read-ahead is one piece at most");
static_assert(kHoleWindowBytes <= kNbdBlockStatusBytesMax,
              "a hole window is one block-status command");
static_assert(kStatusLocalRunExtentsMax <= kStatusAllocationExtentsMax);

// --- disk, patch ---------------------------------------------------------------------

// The head of a partition probed for a file system: btrfs's magic lies at 64 KiB + 64.
inline constexpr uint64_t kFsProbeBytes = 68 * 1024;
// The head of an image read for its partition table: any GPT entry array lies in it.
inline constexpr uint64_t kPartitionTableHeadBytes = 1 << 20;
// Symlinks followed while resolving one guest path, as Linux's MAXSYMLINKS (ELOOP).
inline constexpr int kSymlinkHopsMax = 40;
// A symlink's target and a guest path and name, as Linux's PATH_MAX - 1, PATH_MAX, NAME_MAX.
inline constexpr size_t kSymlinkTargetMax = 4095;
inline constexpr size_t kGuestPathMax = 4096;
inline constexpr size_t kGuestNameMax = 255;
// A guest file read whole (`cat`, an fstab): held in memory.
inline constexpr uint64_t kGuestReadFileMax = uint64_t{256} << 20;
// Entries of one guest directory listed or removed: a hostile image cannot grow memory.
inline constexpr size_t kGuestDirEntriesMax = size_t{1} << 20;
// Depth of a guest tree removed (--delete): a hostile image cannot recurse without bound.
inline constexpr int kGuestRemoveDepthMax = 512;
// A host tree given to --add: its depth and its files.
inline constexpr int kAddDepthMax = 64;
inline constexpr size_t kAddFilesMax = size_t{1} << 20;
// The bytes a patch may change, kept in memory until it is checked and written.
inline constexpr uint64_t kOverlayBytesMax = uint64_t{2} << 30;
// One journal entry's bytes: a longer run is several entries, read with a bounded buffer.
inline constexpr uint64_t kJournalEntryBytesMax = uint64_t{4} << 20;
// First-boot scripts of one image (their names are numbered NNNN-).
inline constexpr unsigned kFirstbootScriptsMax = 9999;
// Lines of an fstab read, and the length of its fields.
inline constexpr size_t kFstabLinesMax = 4096;
inline constexpr size_t kFstabFieldBytesMax = 4096;
// e2image and e2fsck of the patched file system (minutes on a large one).
inline constexpr std::chrono::minutes kFsckTimeout{10};

static_assert(kJournalEntryBytesMax <= kOverlayBytesMax);
static_assert(kFsProbeBytes <= kPartitionTableHeadBytes, "a probe fits the head of an image");

}  // namespace imgstream::limits
