/*
 * test_kvpool.c - the paged KV cache bookkeeping (plugins/textgen/kvpool.c):
 * block states and counts through alloc/retain/release, LRU eviction of
 * cached blocks, exact prefix-cache keys (parent and tokens), and stale
 * keys after a block is reused.  A random walk checks the invariant
 * total = used + cached + free and that no block is handed out twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvpool.h"

#include "check.h"

static void counts(kv_pool *p, int64_t used, int64_t cached, int64_t free_, const char *what) {
  kv_pool_counts c;
  kv_pool_get_counts(p, &c);
  CHECK(c.used == used && c.cached == cached && c.free == free_ && c.total == used + cached + free_,
        "%s: used %lld cached %lld free %lld total %lld, want %lld/%lld/%lld", what,
        (long long)c.used, (long long)c.cached, (long long)c.free, (long long)c.total,
        (long long)used, (long long)cached, (long long)free_);
}

static void test_basic(void) {
  kv_pool *p = NULL;
  velo_error err;
  velo_error_init(&err);
  CHECK(kv_pool_create(0, 4, &p, &err) == VELO_INVALID_ARGUMENT, "zero blocks accepted");
  CHECK(kv_pool_create(4, 0, &p, &err) == VELO_INVALID_ARGUMENT, "zero block size accepted");
  CHECK(kv_pool_create(4, 2, &p, &err) == VELO_OK, "create: %s", err.message);
  counts(p, 0, 0, 4, "new");
  int32_t a = kv_pool_alloc(p), b = kv_pool_alloc(p);
  CHECK(a >= 0 && b >= 0 && a != b, "alloc %d %d", a, b);
  counts(p, 2, 0, 2, "two used");
  int32_t t1[2] = {5, 6}, t2[2] = {7, 8};
  kv_pool_register(p, a, KV_BLOCK_ROOT, t1);
  kv_pool_register(p, b, kv_pool_ref(p, a), t2);
  CHECK(kv_pool_lookup(p, KV_BLOCK_ROOT, t1) == a, "lookup root");
  CHECK(kv_pool_lookup(p, kv_pool_ref(p, a), t2) == b, "lookup child");
  CHECK(kv_pool_lookup(p, KV_BLOCK_ROOT, t2) < 0, "child found under the root");
  int32_t t1x[2] = {5, 7};
  CHECK(kv_pool_lookup(p, KV_BLOCK_ROOT, t1x) < 0, "different tokens matched");
  /* Released registered blocks stay cached and can be retained again. */
  kv_pool_release(p, b);
  kv_pool_release(p, a);
  counts(p, 0, 2, 2, "cached");
  CHECK(kv_pool_available(p) == 4, "available %lld", (long long)kv_pool_available(p));
  kv_pool_retain(p, a);
  counts(p, 1, 1, 2, "a retained from the cache");
  kv_pool_retain(p, a);
  kv_pool_release(p, a);
  counts(p, 1, 1, 2, "two holders, one released");
  kv_pool_release(p, a);
  /* Free blocks go first; then the least recently released cached block
   * (b, released before a) is evicted and leaves the prefix cache. */
  int32_t c = kv_pool_alloc(p), d = kv_pool_alloc(p);
  CHECK(c != a && c != b && d != a && d != b, "cached blocks taken before free ones");
  int32_t e = kv_pool_alloc(p);
  CHECK(e == b, "evicted %d, want the least recently released %d", e, b);
  CHECK(kv_pool_lookup(p, kv_pool_ref(p, a), t2) < 0, "evicted block still found");
  CHECK(kv_pool_lookup(p, KV_BLOCK_ROOT, t1) == a, "a lost its key");
  /* Reusing a also invalidates keys whose parent was the old a. */
  kv_block_ref old_a = kv_pool_ref(p, a);
  int32_t f = kv_pool_alloc(p);
  CHECK(f == a, "alloc %d, want %d", f, a);
  CHECK(kv_pool_ref(p, a).gen != old_a.gen, "generation unchanged on reuse");
  CHECK(kv_pool_alloc(p) == -1, "alloc from a full pool");
  counts(p, 4, 0, 0, "full");
  kv_pool_counts cc;
  kv_pool_get_counts(p, &cc);
  CHECK(cc.evictions == 2, "evictions %lld", (long long)cc.evictions);
  /* Registering an equal key twice keeps the first. */
  kv_pool_register(p, c, KV_BLOCK_ROOT, t1);
  kv_pool_register(p, d, KV_BLOCK_ROOT, t1);
  CHECK(kv_pool_lookup(p, KV_BLOCK_ROOT, t1) == c, "duplicate key replaced the first");
  kv_pool_release(p, d);
  counts(p, 3, 0, 1, "unregistered block freed, not cached");
  kv_pool_free(p);
}

/* Random walk: holders take, share and drop blocks; the counts always
 * add up, and a block is never handed out while it is held. */
static void test_random(void) {
  enum { NB = 37, H = 200 };
  kv_pool *p = NULL;
  velo_error err;
  velo_error_init(&err);
  CHECK(kv_pool_create(NB, 4, &p, &err) == VELO_OK, "create");
  int32_t held[H];
  int n_held = 0, refs[NB] = {0};
  check_rng_state = 0xb10c5ull;
  for (int it = 0; it < 20000; it++) {
    unsigned r = (unsigned)(check_rnd() % 4);
    if (r == 0 && n_held < H) {
      int32_t id = kv_pool_alloc(p);
      if (id >= 0) {
        CHECK(refs[id] == 0, "block %d handed out while held %d times", id, refs[id]);
        refs[id]++;
        held[n_held++] = id;
        int32_t toks[4] = {(int32_t)(check_rnd() % 3), 1, 2, 3};
        if (check_rnd() % 2) kv_pool_register(p, id, KV_BLOCK_ROOT, toks);
      } else {
        int64_t in_use = 0;
        for (int i = 0; i < NB; i++) in_use += refs[i] > 0;
        CHECK(in_use == NB, "alloc failed with %lld of %d blocks held", (long long)in_use, NB);
      }
    } else if (r == 1 && n_held > 0 && n_held < H) {
      int32_t id = held[check_rnd() % (uint64_t)n_held];
      kv_pool_retain(p, id);
      refs[id]++;
      held[n_held++] = id;
    } else if (n_held > 0) {
      int k = (int)(check_rnd() % (uint64_t)n_held);
      int32_t id = held[k];
      held[k] = held[--n_held];
      kv_pool_release(p, id);
      refs[id]--;
    }
    kv_pool_counts c;
    kv_pool_get_counts(p, &c);
    int64_t in_use = 0;
    for (int i = 0; i < NB; i++) in_use += refs[i] > 0;
    if (c.used != in_use || c.used + c.cached + c.free != NB) {
      CHECK(0, "step %d: used %lld (held %lld) cached %lld free %lld", it, (long long)c.used,
            (long long)in_use, (long long)c.cached, (long long)c.free);
      break;
    }
  }
  while (n_held > 0) kv_pool_release(p, held[--n_held]);
  kv_pool_counts c;
  kv_pool_get_counts(p, &c);
  CHECK(c.used == 0 && c.cached + c.free == NB, "after releasing all: used %lld", (long long)c.used);
  kv_pool_free(p);
}

int main(void) {
  test_basic();
  test_random();
  return check_summary("kvpool");
}
