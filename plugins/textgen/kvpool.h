/*
 * kvpool.h - bookkeeping of a paged KV cache: which fixed-size blocks of
 * token slots are free, which sequence holds which, and which free blocks
 * still hold a reusable prompt prefix (prefix caching).
 *
 * The K and V memory itself lives on the backend (llama_kv_pool in
 * llama.h); this module only hands out block ids.  Paging as in Kwon et
 * al. 2023 ("Efficient Memory Management for Large Language Model Serving
 * with PagedAttention"): a sequence's logical position p lives in slot
 * table[p / block_size] * block_size + p % block_size.
 *
 * Prefix caching: a block whose block_size slots are all written is
 * registered under its content key, (the key of the block before it in
 * its sequence, its block_size token ids).  Because the CPU kernels are
 * batch-invariant, K and V of a token depend only on the tokens up to it,
 * so an equal key means equal K/V and a later sequence may share the
 * block instead of recomputing it.  Keys are compared exactly (parent
 * block id and generation, then the token ids), so a hash collision never
 * shares a wrong block.  A registered block whose last holder releases it
 * stays "cached" (free but reusable) until it is needed for new content,
 * least recently released first.
 *
 * States: each block is FREE (empty), USED (ref_count >= 1) or CACHED
 * (ref_count 0, registered).  total = used + cached + free at all times.
 *
 * Thread-safety: none; the engine thread owns the pool.  All functions are
 * O(1) except lookup/register (O(block_size)) and create/free.
 */
#ifndef VELO_TEXTGEN_KVPOOL_H
#define VELO_TEXTGEN_KVPOOL_H

#include <stdbool.h>
#include <stdint.h>

#include "velo/status.h"

typedef struct kv_pool kv_pool;

/* A reference to a registered block: its id and the generation it had when
 * registered (a block reused for new content gets a new generation, so a
 * stale reference never matches).  The root (no parent) is {-1, 0}. */
typedef struct kv_block_ref {
  int32_t id;
  uint32_t gen;
} kv_block_ref;

#define KV_BLOCK_ROOT ((kv_block_ref){-1, 0})

typedef struct kv_pool_counts {
  int64_t total, used, cached, free;
  int64_t evictions; /* cached blocks reused for new content */
} kv_pool_counts;

/* Creates a pool of n_blocks blocks of block_size slots each (both >= 1).
 * RESOURCE_EXHAUSTED when out of memory. */
velo_status kv_pool_create(int32_t n_blocks, int32_t block_size, kv_pool **out, velo_error *err);
void kv_pool_free(kv_pool *p);

int32_t kv_pool_block_size(const kv_pool *p);
int32_t kv_pool_n_blocks(const kv_pool *p);

/* Blocks that kv_pool_alloc can hand out now (free + cached). */
int64_t kv_pool_available(const kv_pool *p);

/* Takes a block for new content: an empty one if any, else the least
 * recently released cached one (which leaves the prefix cache).  The block
 * is USED with ref_count 1.  Returns the id, or -1 if every block is used. */
int32_t kv_pool_alloc(kv_pool *p);

/* Adds a holder to a USED or CACHED block (a CACHED one becomes USED). */
void kv_pool_retain(kv_pool *p, int32_t id);

/* Drops a holder.  At ref_count 0 a registered block becomes CACHED (most
 * recently released), an unregistered one FREE. */
void kv_pool_release(kv_pool *p, int32_t id);

/* The current reference of block id (for use as a parent key). */
kv_block_ref kv_pool_ref(const kv_pool *p, int32_t id);

/* Registers USED block id, whose block_size slots hold tokens[0..bs) and
 * follow parent, in the prefix cache.  If an equal key is already
 * registered (another sequence computed the same prefix) nothing changes.
 * A block is registered at most once; later calls for it are ignored. */
void kv_pool_register(kv_pool *p, int32_t id, kv_block_ref parent, const int32_t *tokens);

/* Finds the registered block holding tokens[0..bs) after parent; -1 if
 * none.  Does not retain it. */
int32_t kv_pool_lookup(const kv_pool *p, kv_block_ref parent, const int32_t *tokens);

void kv_pool_get_counts(const kv_pool *p, kv_pool_counts *out);

#endif
