/*
 * kvpool.c - paged KV cache bookkeeping and the prefix cache.  See
 * kvpool.h for the contract.
 *
 * Data structures: a stack of FREE block ids; a doubly linked LRU list of
 * CACHED blocks (head = least recently released); a chained hash table of
 * registered blocks keyed by (parent ref, tokens), with the token ids of
 * every registered block kept here so that lookups compare exactly.
 */
#include "kvpool.h"

#include <stdlib.h>
#include <string.h>

enum { ST_FREE = 0, ST_USED = 1, ST_CACHED = 2 };

typedef struct kv_block {
  int32_t ref_count;
  uint8_t state;
  bool registered;
  uint32_t gen;
  kv_block_ref parent; /* key part 1, when registered */
  uint64_t hash;
  int32_t hnext;       /* next registered block in the same hash bucket */
  int32_t lru_prev, lru_next; /* CACHED list */
} kv_block;

struct kv_pool {
  int32_t n_blocks, bs;
  kv_block *blocks;
  int32_t *tokens;     /* n_blocks * bs: key part 2, when registered */
  int32_t *free_stack;
  int32_t n_free;
  int32_t lru_head, lru_tail;
  int64_t n_used, n_cached, evictions;
  int32_t *buckets;    /* n_buckets heads, -1 = empty */
  uint32_t bucket_mask;
};

static uint64_t mix64(uint64_t x) {
  /* splitmix64 finaliser */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

static uint64_t key_hash(kv_block_ref parent, const int32_t *tokens, int32_t bs) {
  uint64_t h = mix64(((uint64_t)(uint32_t)parent.id << 32 | parent.gen) ^ 0x9e3779b97f4a7c15ULL);
  for (int32_t i = 0; i < bs; i++) h = mix64(h ^ (uint32_t)tokens[i]) + (uint64_t)i;
  return h;
}

velo_status kv_pool_create(int32_t n_blocks, int32_t block_size, kv_pool **out, velo_error *err) {
  *out = NULL;
  if (n_blocks < 1 || block_size < 1)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "KV pool of %d blocks of %d slots; both must be >= 1",
                          n_blocks, block_size);
  kv_pool *p = calloc(1, sizeof *p);
  if (!p) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  p->n_blocks = n_blocks;
  p->bs = block_size;
  uint32_t nb = 1;
  while (nb < (uint32_t)n_blocks && nb < (1u << 30)) nb <<= 1;
  p->bucket_mask = nb - 1;
  p->blocks = calloc((size_t)n_blocks, sizeof *p->blocks);
  p->tokens = malloc((size_t)n_blocks * (size_t)block_size * sizeof *p->tokens);
  p->free_stack = malloc((size_t)n_blocks * sizeof *p->free_stack);
  p->buckets = malloc((size_t)nb * sizeof *p->buckets);
  if (!p->blocks || !p->tokens || !p->free_stack || !p->buckets) {
    kv_pool_free(p);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory for the KV pool tables");
  }
  for (uint32_t i = 0; i < nb; i++) p->buckets[i] = -1;
  /* Lowest ids on top of the stack, so allocation order is predictable. */
  for (int32_t i = 0; i < n_blocks; i++) {
    p->free_stack[i] = n_blocks - 1 - i;
    p->blocks[i].hnext = p->blocks[i].lru_prev = p->blocks[i].lru_next = -1;
  }
  p->n_free = n_blocks;
  p->lru_head = p->lru_tail = -1;
  *out = p;
  return VELO_OK;
}

void kv_pool_free(kv_pool *p) {
  if (!p) return;
  free(p->blocks);
  free(p->tokens);
  free(p->free_stack);
  free(p->buckets);
  free(p);
}

int32_t kv_pool_block_size(const kv_pool *p) { return p->bs; }
int32_t kv_pool_n_blocks(const kv_pool *p) { return p->n_blocks; }
int64_t kv_pool_available(const kv_pool *p) { return (int64_t)p->n_free + p->n_cached; }

static void lru_unlink(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  if (b->lru_prev >= 0) p->blocks[b->lru_prev].lru_next = b->lru_next;
  else p->lru_head = b->lru_next;
  if (b->lru_next >= 0) p->blocks[b->lru_next].lru_prev = b->lru_prev;
  else p->lru_tail = b->lru_prev;
  b->lru_prev = b->lru_next = -1;
}

static void lru_push_tail(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  b->lru_prev = p->lru_tail;
  b->lru_next = -1;
  if (p->lru_tail >= 0) p->blocks[p->lru_tail].lru_next = id;
  else p->lru_head = id;
  p->lru_tail = id;
}

static void unregister(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  if (!b->registered) return;
  int32_t *link = &p->buckets[b->hash & p->bucket_mask];
  while (*link >= 0 && *link != id) link = &p->blocks[*link].hnext;
  if (*link == id) *link = b->hnext;
  b->hnext = -1;
  b->registered = false;
}

int32_t kv_pool_alloc(kv_pool *p) {
  int32_t id;
  if (p->n_free > 0) {
    id = p->free_stack[--p->n_free];
  } else if (p->lru_head >= 0) {
    id = p->lru_head;
    lru_unlink(p, id);
    unregister(p, id);
    p->n_cached--;
    p->evictions++;
  } else {
    return -1;
  }
  kv_block *b = &p->blocks[id];
  b->gen++;
  b->state = ST_USED;
  b->ref_count = 1;
  b->registered = false;
  p->n_used++;
  return id;
}

void kv_pool_retain(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  if (b->state == ST_CACHED) {
    lru_unlink(p, id);
    p->n_cached--;
    p->n_used++;
    b->state = ST_USED;
    b->ref_count = 0;
  }
  b->ref_count++;
}

void kv_pool_release(kv_pool *p, int32_t id) {
  kv_block *b = &p->blocks[id];
  if (b->state != ST_USED || b->ref_count <= 0) return; /* not held: ignore */
  if (--b->ref_count > 0) return;
  p->n_used--;
  if (b->registered) {
    b->state = ST_CACHED;
    lru_push_tail(p, id);
    p->n_cached++;
  } else {
    b->state = ST_FREE;
    p->free_stack[p->n_free++] = id;
  }
}

kv_block_ref kv_pool_ref(const kv_pool *p, int32_t id) {
  return (kv_block_ref){id, p->blocks[id].gen};
}

static bool key_equal(const kv_pool *p, int32_t id, kv_block_ref parent, const int32_t *tokens) {
  const kv_block *b = &p->blocks[id];
  return b->parent.id == parent.id && b->parent.gen == parent.gen &&
         memcmp(p->tokens + (size_t)id * (size_t)p->bs, tokens, (size_t)p->bs * sizeof *tokens) == 0;
}

int32_t kv_pool_lookup(const kv_pool *p, kv_block_ref parent, const int32_t *tokens) {
  uint64_t h = key_hash(parent, tokens, p->bs);
  for (int32_t id = p->buckets[h & p->bucket_mask]; id >= 0; id = p->blocks[id].hnext)
    if (p->blocks[id].hash == h && key_equal(p, id, parent, tokens)) return id;
  return -1;
}

void kv_pool_register(kv_pool *p, int32_t id, kv_block_ref parent, const int32_t *tokens) {
  kv_block *b = &p->blocks[id];
  if (b->registered || b->state != ST_USED) return;
  if (kv_pool_lookup(p, parent, tokens) >= 0) return; /* already cached elsewhere */
  b->registered = true;
  b->parent = parent;
  b->hash = key_hash(parent, tokens, p->bs);
  memcpy(p->tokens + (size_t)id * (size_t)p->bs, tokens, (size_t)p->bs * sizeof *tokens);
  int32_t *head = &p->buckets[b->hash & p->bucket_mask];
  b->hnext = *head;
  *head = id;
}

void kv_pool_get_counts(const kv_pool *p, kv_pool_counts *out) {
  out->total = p->n_blocks;
  out->used = p->n_used;
  out->cached = p->n_cached;
  out->free = p->n_free;
  out->evictions = p->evictions;
}
