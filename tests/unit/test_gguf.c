/*
 * test_gguf.c - unit tests of the host's GGUF reader (core/gguf.c).
 *
 * Three parts: (1) the real files in the shared data folder open and give
 * the values we know they hold; (2) a small GGUF writer below builds files
 * with every value type, nested and empty arrays and tensors of several
 * types and alignments, and every getter must give back what was written;
 * (3) malformed files: every truncation of a valid file, targeted
 * corruptions (each must be DATA_LOSS with a message naming the problem)
 * and thousands of random byte changes, none of which may crash.
 *
 * Usage: test_gguf [SHARED_DIR]   (default: the VELO_SHARED_DIR it was built
 * with).  Prints "gguf: N checks passed" and exits 0, or lists each failed
 * check and exits 1.  The writer assumes a little-endian host.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "velo/gguf.h"

#include "check.h"

/* The reader's table (core/gguf.h); declared here so the test uses exactly
 * what plugins get. */
extern const velo_gguf_api velo_gguf_reader;
static const velo_gguf_api *api = &velo_gguf_reader;

#ifndef VELO_SHARED_DIR
#define VELO_SHARED_DIR "../shared"
#endif

/* ------------------------------------------------------------------ */
/* Checks                                                              */
/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* A growable byte buffer and a GGUF writer                            */
/* ------------------------------------------------------------------ */

typedef struct wbuf {
  uint8_t *p;
  size_t n, cap;
} wbuf;

/* Appends n bytes; exits on out of memory (a test can't go on). */
static void wb_bytes(wbuf *b, const void *s, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) {
      fprintf(stderr, "test_gguf: out of memory\n");
      exit(2);
    }
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->n, s, n);
  b->n += n;
}

static void wb_u8(wbuf *b, uint8_t v) {
  wb_bytes(b, &v, 1);
}
static void wb_u32(wbuf *b, uint32_t v) {
  uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  wb_bytes(b, x, 4);
}
static void wb_u64(wbuf *b, uint64_t v) {
  wb_u32(b, (uint32_t)v);
  wb_u32(b, (uint32_t)(v >> 32));
}
static void wb_str(wbuf *b, const char *s) {
  wb_u64(b, strlen(s));
  wb_bytes(b, s, strlen(s));
}
static void wb_free(wbuf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* A GGUF file under construction: metadata, tensor infos and data are kept
 * apart and joined by gw_finish(). */
typedef struct gw {
  uint32_t version;
  wbuf kv;
  uint64_t n_kv;
  wbuf ti;
  uint64_t n_t;
  wbuf data;
  uint32_t align;    /* padding and automatic tensor offsets */
  bool force_counts; /* write n_t_header / n_kv_header instead */
  uint64_t n_t_header, n_kv_header;
} gw;

static void gw_init(gw *w) {
  memset(w, 0, sizeof *w);
  w->version = 3;
  w->align = 32;
}

static void gw_free(gw *w) {
  wb_free(&w->kv);
  wb_free(&w->ti);
  wb_free(&w->data);
}

/* Starts a key/value: writes the key and the value type; the caller writes
 * the value into w->kv. */
static void gw_key(gw *w, const char *key, uint32_t type) {
  wb_str(&w->kv, key);
  wb_u32(&w->kv, type);
  w->n_kv++;
}

/* A whole numeric array: count elements of esize bytes each. */
static void gw_array(gw *w, const char *key, uint32_t elem, const void *v, uint64_t count,
                     size_t esize) {
  gw_key(w, key, 9);
  wb_u32(&w->kv, elem);
  wb_u64(&w->kv, count);
  wb_bytes(&w->kv, v, (size_t)count * esize);
}

static void gw_array_str(gw *w, const char *key, const char *const *v, uint64_t count) {
  uint64_t i;
  gw_key(w, key, 9);
  wb_u32(&w->kv, 8);
  wb_u64(&w->kv, count);
  for (i = 0; i < count; i++) wb_str(&w->kv, v[i]);
}

/* Appends a tensor info with explicit fields (anything, even invalid). */
static void gw_tensor_raw(gw *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                          uint32_t type, uint64_t offset) {
  uint32_t d;
  wb_str(&w->ti, name);
  wb_u32(&w->ti, n_dims);
  for (d = 0; d < n_dims; d++) wb_u64(&w->ti, ne[d]);
  wb_u32(&w->ti, type);
  wb_u64(&w->ti, offset);
  w->n_t++;
}

/* The test pattern of tensor data: byte j of a tensor whose data starts at
 * relative offset off. */
static uint8_t pattern(uint64_t off, uint64_t j) {
  return (uint8_t)((off * 31 + j * 7 + 1) & 0xff);
}

/* Appends a valid tensor: aligned offset, data filled with pattern().
 * Returns its relative offset. */
static uint64_t gw_tensor(gw *w, const char *name, uint32_t type, uint32_t n_dims,
                          const int64_t *ne) {
  uint64_t nel_rows = 1, size, off, j, une[4];
  uint32_t d;
  for (d = 0; d < n_dims; d++) {
    une[d] = (uint64_t)ne[d];
    if (d > 0) nel_rows *= une[d];
  }
  size = velo_dtype_row_bytes((int)type, ne[0]) * nel_rows;
  while (w->data.n % w->align) wb_u8(&w->data, 0xee);
  off = w->data.n;
  for (j = 0; j < size; j++) wb_u8(&w->data, pattern(off, j));
  gw_tensor_raw(w, name, n_dims, une, type, off);
  return off;
}

/* Joins header, metadata, tensor infos, padding (to w->align, or 32 if that
 * is not a power of two) and data into out (which the caller frees). */
static void gw_finish(const gw *w, wbuf *out) {
  uint32_t pad_to = w->align && !(w->align & (w->align - 1)) ? w->align : 32;
  memset(out, 0, sizeof *out);
  wb_bytes(out, "GGUF", 4);
  wb_u32(out, w->version);
  wb_u64(out, w->force_counts ? w->n_t_header : w->n_t);
  wb_u64(out, w->force_counts ? w->n_kv_header : w->n_kv);
  wb_bytes(out, w->kv.p, w->kv.n);
  wb_bytes(out, w->ti.p, w->ti.n);
  if (w->n_t) {
    while (out->n % pad_to) wb_u8(out, 0);
    wb_bytes(out, w->data.p, w->data.n);
  }
}

/* ------------------------------------------------------------------ */
/* Temporary files                                                     */
/* ------------------------------------------------------------------ */

static char tmp_dir[512];
static char tmp_file[600];

static void tmp_setup(void) {
  const char *t = getenv("TMPDIR");
  snprintf(tmp_dir, sizeof tmp_dir, "%s/test_gguf.XXXXXX", t && *t ? t : "/tmp");
  if (!mkdtemp(tmp_dir)) {
    fprintf(stderr, "test_gguf: mkdtemp %s: %s\n", tmp_dir, strerror(errno));
    exit(2);
  }
  snprintf(tmp_file, sizeof tmp_file, "%s/t.gguf", tmp_dir);
}

static void tmp_cleanup(void) {
  unlink(tmp_file);
  rmdir(tmp_dir);
}

/* Writes n bytes to the temporary file; exits if it can't. */
static void write_file(const void *p, size_t n) {
  FILE *f = fopen(tmp_file, "wb");
  if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
    fprintf(stderr, "test_gguf: write %s: %s\n", tmp_file, strerror(errno));
    exit(2);
  }
}

/* Writes the first n bytes of b and opens the result. */
static velo_status open_bytes(const uint8_t *p, size_t n, velo_gguf **g, velo_error *err) {
  write_file(p, n);
  velo_error_init(err);
  return api->open(tmp_file, g, err);
}

/* ------------------------------------------------------------------ */
/* Exercising an open file                                             */
/* ------------------------------------------------------------------ */

static volatile unsigned sink; /* keeps reads of the mapping from being optimised away */

/* Copies a name of len bytes into buf as a C string; false if it does not
 * fit or holds a NUL (then no lookup by that name is possible). */
static bool cname(char *buf, size_t cap, const char *s, size_t len) {
  if (len >= cap || memchr(s, 0, len)) return false;
  memcpy(buf, s, len);
  buf[len] = '\0';
  return true;
}

typedef struct span {
  uint64_t off, size;
} span;

static int span_cmp(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off;
}

/* Calls every accessor on every key and tensor of an open file and checks
 * the invariants the reader promises: lookups find what iteration gives,
 * tensor data lies inside the file, is aligned and does not overlap.  Reads
 * the first and last byte of every string and tensor.  Returns false on the
 * first broken invariant (after reporting it through CHECK). */
static bool exercise(velo_gguf *g) {
  int64_t i, nk = api->kv_count(g), nt = api->tensor_count(g);
  uint64_t fsize = api->file_size(g);
  size_t align = api->alignment(g);
  span *spans;
  bool ok = true;
  char name[512];
  velo_error err;

  velo_error_init(&err);
  for (i = 0; i < nk; i++) {
    size_t len = 0;
    const char *k = api->key_name(g, i, &len);
    velo_gguf_type t = api->kv_type(g, i), et;
    uint64_t count = 0, j;
    if (!k) {
      CHECK(k != NULL, "key_name(%" PRId64 ") is NULL", i);
      return false;
    }
    if (!cname(name, sizeof name, k, len)) continue;
    if (api->find_key(g, name) != i) {
      CHECK(api->find_key(g, name) == i, "find_key(%s)", name);
      return false;
    }
    if (t == VELO_GGUF_STRING) {
      const char *s;
      size_t sl;
      if (api->get_string(g, name, &s, &sl, &err) != VELO_OK) return false;
      if (sl) sink += (unsigned char)s[0] + (unsigned char)s[sl - 1];
    } else if (t == VELO_GGUF_ARRAY) {
      if (!api->kv_array_info(g, i, &et, &count)) return false;
      if (et == VELO_GGUF_STRING) {
        for (j = 0; j < count; j++) {
          const char *s;
          size_t sl;
          if (api->get_array_string(g, name, j, &s, &sl, &err) != VELO_OK) return false;
          if (sl) sink += (unsigned char)s[0] + (unsigned char)s[sl - 1];
        }
      } else if (et != VELO_GGUF_ARRAY) {
        const void *data;
        uint64_t c2;
        if (api->get_array(g, name, &et, &c2, &data, &err) != VELO_OK || c2 != count) return false;
        if (count) sink += ((const unsigned char *)data)[0];
      }
    } else if (t == VELO_GGUF_FLOAT32 || t == VELO_GGUF_FLOAT64) {
      double d;
      if (api->get_float(g, name, &d, &err) != VELO_OK) return false;
    } else {
      int64_t v;
      velo_status st = api->get_int(g, name, &v, &err);
      if (st != VELO_OK && st != VELO_OUT_OF_RANGE) return false;
    }
  }

  spans = calloc(nt ? (size_t)nt : 1, sizeof *spans);
  for (i = 0; i < nt && ok; i++) {
    velo_gguf_tensor_info ti;
    const unsigned char *d;
    memset(&ti, 0, sizeof ti);
    ti.struct_size = sizeof ti;
    if (api->tensor_info(g, i, &ti, &err) != VELO_OK) {
      ok = false;
      break;
    }
    ok = ti.n_dims >= 1 && ti.n_dims <= 4 && ti.size > 0 && ti.offset <= fsize &&
         ti.size <= fsize - ti.offset && ti.offset % align == 0 &&
         ti.size ==
             velo_dtype_row_bytes(ti.dtype, ti.ne[0]) * (size_t)(ti.ne[1] * ti.ne[2] * ti.ne[3]);
    CHECK(ok, "tensor %" PRId64 " invariants (offset %" PRIu64 " size %zu)", i, ti.offset, ti.size);
    if (!ok) break;
    d = ti.data;
    sink += d[0] + d[ti.size - 1];
    if (cname(name, sizeof name, ti.name, ti.name_len) && api->find_tensor(g, name) != i) {
      CHECK(api->find_tensor(g, name) == i, "find_tensor(%s)", name);
      ok = false;
    }
    spans[i].off = ti.offset;
    spans[i].size = ti.size;
  }
  if (ok && nt > 1) {
    qsort(spans, (size_t)nt, sizeof *spans, span_cmp);
    for (i = 1; i < nt; i++)
      if (spans[i - 1].off + spans[i - 1].size > spans[i].off) ok = false;
    CHECK(ok, "tensor data overlaps");
  }
  free(spans);
  return ok;
}

/* ------------------------------------------------------------------ */
/* Part 1: real files                                                   */
/* ------------------------------------------------------------------ */

/* Value of a string key as a C string in buf ("" on failure). */
static const char *str_key(velo_gguf *g, const char *key, char *buf, size_t cap) {
  const char *s;
  size_t n;
  buf[0] = '\0';
  if (api->get_string(g, key, &s, &n, NULL) == VELO_OK) cname(buf, cap, s, n);
  return buf;
}

static void test_stories(const char *shared) {
  char path[1024], buf[256];
  velo_gguf *g = NULL;
  velo_error err;
  velo_status st;
  int64_t v = 0, i;
  uint64_t count = 0;
  velo_gguf_type et;
  const void *data;
  const char *s;
  size_t n;
  velo_gguf_tensor_info ti;

  snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared);
  velo_error_init(&err);
  st = api->open(path, &g, &err);
  CHECK(st == VELO_OK, "open %s: %s", path, err.message);
  if (st != VELO_OK) return;
  CHECK(api->version(g) == 3, "version %u", api->version(g));
  CHECK(strcmp(api->path(g), path) == 0, "path %s", api->path(g));
  CHECK(api->file_size(g) == 1185376, "file size %" PRIu64, api->file_size(g));
  CHECK(strcmp(str_key(g, "general.architecture", buf, sizeof buf), "llama") == 0, "arch %s", buf);
  CHECK(api->get_int(g, "llama.block_count", &v, &err) == VELO_OK && v == 5, "block_count %" PRId64,
        v);
  CHECK(api->get_int(g, "llama.embedding_length", &v, &err) == VELO_OK && v == 64,
        "n_embd %" PRId64, v);
  i = api->find_key(g, "tokenizer.ggml.tokens");
  CHECK(i >= 0 && api->kv_type(g, i) == VELO_GGUF_ARRAY, "tokens key");
  CHECK(api->kv_array_info(g, i, &et, &count) && et == VELO_GGUF_STRING && count == 512,
        "tokens: type %d count %" PRIu64, (int)et, count);
  st = api->get_array_string(g, "tokenizer.ggml.tokens", 1, &s, &n, &err);
  CHECK(st == VELO_OK && n == 3 && memcmp(s, "<s>", 3) == 0, "token 1: %s", err.message);
  st = api->get_array_string(g, "tokenizer.ggml.tokens", 0, &s, &n, &err);
  CHECK(st == VELO_OK && n == 5 && memcmp(s, "<unk>", 5) == 0, "token 0");
  st = api->get_array_string(g, "tokenizer.ggml.tokens", 3 + 0x41, &s, &n, &err);
  CHECK(st == VELO_OK && n == 6 && memcmp(s, "<0x41>", 6) == 0, "token 68");
  st = api->get_array_string(g, "tokenizer.ggml.tokens", 512, &s, &n, &err);
  CHECK(st == VELO_INVALID_ARGUMENT, "token 512 is out of range: %s", velo_status_name(st));
  st = api->get_array(g, "tokenizer.ggml.scores", &et, &count, &data, &err);
  CHECK(st == VELO_OK && et == VELO_GGUF_FLOAT32 && count == 512, "scores: %s", err.message);

  i = api->find_tensor(g, "token_embd.weight");
  CHECK(i >= 0, "token_embd.weight found");
  memset(&ti, 0, sizeof ti);
  ti.struct_size = sizeof ti;
  st = api->tensor_info(g, i, &ti, &err);
  CHECK(st == VELO_OK && ti.dtype == VELO_DTYPE_F32 && ti.n_dims == 2 && ti.ne[0] == 64 &&
            ti.ne[1] == 512 && ti.ne[2] == 1 && ti.ne[3] == 1 && ti.size == 64 * 512 * 4,
        "token_embd.weight: dtype %d n_dims %d ne %" PRId64 "x%" PRId64 " size %zu", (int)ti.dtype,
        ti.n_dims, ti.ne[0], ti.ne[1], ti.size);
  CHECK(ti.name_len == strlen("token_embd.weight") &&
            memcmp(ti.name, "token_embd.weight", ti.name_len) == 0,
        "tensor name");
  CHECK(ti.offset % api->alignment(g) == 0 && (const char *)ti.data != NULL, "aligned data");
  CHECK(api->find_tensor(g, "no.such.tensor") == -1, "missing tensor");
  CHECK(exercise(g), "exercise %s", path);
  api->close(g);

  /* The Q8_0 file: 32 Q8_0 matrices, 5 F16 ffn_down, the rest F32. */
  snprintf(path, sizeof path, "%s/models/stories260K-q8_0.gguf", shared);
  st = api->open(path, &g, &err);
  CHECK(st == VELO_OK, "open %s: %s", path, err.message);
  if (st != VELO_OK) return;
  {
    int n_q8 = 0, n_f16 = 0;
    for (i = 0; i < api->tensor_count(g); i++) {
      memset(&ti, 0, sizeof ti);
      ti.struct_size = sizeof ti;
      if (api->tensor_info(g, i, &ti, &err) != VELO_OK) break;
      n_q8 += ti.dtype == VELO_DTYPE_Q8_0;
      n_f16 += ti.dtype == VELO_DTYPE_F16;
      if (ti.dtype == VELO_DTYPE_Q8_0)
        CHECK(ti.size == (size_t)(ti.ne[0] / 32 * 34 * ti.ne[1] * ti.ne[2] * ti.ne[3]),
              "q8_0 size");
    }
    CHECK(n_q8 == 32 && n_f16 == 5, "%d Q8_0 and %d F16 tensors", n_q8, n_f16);
  }
  CHECK(exercise(g), "exercise %s", path);
  api->close(g);
}

/* Opens every *.gguf in dir; vocabulary files must have 30k-152k tokens. */
static void test_dir(const char *shared, const char *sub, bool vocab) {
  char dir[1024], path[2048];
  DIR *d;
  struct dirent *e;
  int n_files = 0;
  snprintf(dir, sizeof dir, "%s/%s", shared, sub);
  d = opendir(dir);
  CHECK(d != NULL, "opendir %s: %s", dir, strerror(errno));
  if (!d) return;
  while ((e = readdir(d)) != NULL) {
    size_t n = strlen(e->d_name);
    velo_gguf *g = NULL;
    velo_error err;
    velo_status st;
    if (n < 5 || strcmp(e->d_name + n - 5, ".gguf") != 0) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    velo_error_init(&err);
    st = api->open(path, &g, &err);
    CHECK(st == VELO_OK, "open %s: %s", path, err.message);
    if (st != VELO_OK) continue;
    n_files++;
    CHECK(exercise(g), "exercise %s", path);
    if (vocab) {
      velo_gguf_type et;
      uint64_t count = 0;
      int64_t k = api->find_key(g, "tokenizer.ggml.tokens");
      CHECK(api->kv_array_info(g, k, &et, &count) && et == VELO_GGUF_STRING && count >= 30000 &&
                count <= 151936,
            "%s: %" PRIu64 " tokens", path, count);
    } else {
      CHECK(api->tensor_count(g) > 0, "%s has tensors", path);
    }
    api->close(g);
  }
  closedir(d);
  CHECK(n_files >= (vocab ? 12 : 10), "%d files in %s", n_files, dir);
}

/* ------------------------------------------------------------------ */
/* Part 2: a file with every value type                                 */
/* ------------------------------------------------------------------ */

static const uint8_t A_U8[] = {0, 1, 255};
static const int8_t A_I8[] = {-128, 0, 127};
static const uint16_t A_U16[] = {0, 65535, 258};
static const int16_t A_I16[] = {-32768, 32767, -1};
static const uint32_t A_U32[] = {0, 4294967295u, 123456};
static const int32_t A_I32[] = {INT32_MIN, INT32_MAX, -7};
static const float A_F32[] = {1.5f, -0.25f, 3e38f};
static const uint8_t A_BOOL[] = {1, 0, 1};
static const uint64_t A_U64[] = {0, UINT64_MAX, 42};
static const int64_t A_I64[] = {INT64_MIN, INT64_MAX, -42};
static const double A_F64[] = {1e-300, -2.5, 3.141592653589793};
static const char *const A_STR[] = {"alpha", "", "\xce\xb3 utf8", "<s>"};

/* One tensor of the sample file. */
typedef struct sample_tensor {
  const char *name;
  uint32_t type;
  uint32_t n_dims;
  int64_t ne[4];
  uint64_t off; /* relative, filled by build_sample */
} sample_tensor;

static sample_tensor SAMPLE_T[] = {
    {"t.f32", VELO_DTYPE_F32, 2, {8, 3, 1, 1}, 0},
    {"t.f16", VELO_DTYPE_F16, 1, {17, 1, 1, 1}, 0},
    {"t.q4_0", VELO_DTYPE_Q4_0, 2, {64, 2, 1, 1}, 0},
    {"t.q8_0", VELO_DTYPE_Q8_0, 3, {32, 1, 2, 1}, 0},
    {"t.q4_k", VELO_DTYPE_Q4_K, 4, {256, 2, 1, 1}, 0},
    {"t.i32", VELO_DTYPE_I32, 1, {5, 1, 1, 1}, 0},
};
#define N_SAMPLE_T (sizeof SAMPLE_T / sizeof SAMPLE_T[0])

/* Builds the sample file into out: every scalar and array type, nested and
 * empty arrays, an empty string, and SAMPLE_T.  align 0 means no
 * general.alignment key (the default 32). */
static void build_sample(wbuf *out, uint32_t version, uint32_t align) {
  gw w;
  size_t i;
  gw_init(&w);
  w.version = version;
  gw_key(&w, "general.architecture", 8);
  wb_str(&w.kv, "llama");
  if (align) {
    gw_key(&w, "general.alignment", 4);
    wb_u32(&w.kv, align);
    w.align = align;
  }
  gw_key(&w, "s.u8", 0), wb_u8(&w.kv, 200);
  gw_key(&w, "s.i8", 1), wb_u8(&w.kv, (uint8_t)-100);
  gw_key(&w, "s.u16", 2), wb_bytes(&w.kv, &A_U16[1], 2);
  gw_key(&w, "s.i16", 3), wb_bytes(&w.kv, &A_I16[0], 2);
  gw_key(&w, "s.u32", 4), wb_u32(&w.kv, 4294967295u);
  gw_key(&w, "s.i32", 5), wb_u32(&w.kv, (uint32_t)INT32_MIN);
  gw_key(&w, "s.f32", 6), wb_bytes(&w.kv, &A_F32[0], 4);
  gw_key(&w, "s.bool", 7), wb_u8(&w.kv, 1);
  gw_key(&w, "s.false", 7), wb_u8(&w.kv, 0);
  gw_key(&w, "s.str", 8), wb_str(&w.kv, "hello, world");
  gw_key(&w, "s.empty", 8), wb_str(&w.kv, "");
  gw_key(&w, "s.u64", 10), wb_u64(&w.kv, (uint64_t)INT64_MAX);
  gw_key(&w, "s.u64big", 10), wb_u64(&w.kv, (uint64_t)INT64_MAX + 1);
  gw_key(&w, "s.i64", 11), wb_u64(&w.kv, (uint64_t)INT64_MIN);
  gw_key(&w, "s.f64", 12), wb_bytes(&w.kv, &A_F64[0], 8);
  gw_array(&w, "a.u8", 0, A_U8, 3, 1);
  gw_array(&w, "a.i8", 1, A_I8, 3, 1);
  gw_array(&w, "a.u16", 2, A_U16, 3, 2);
  gw_array(&w, "a.i16", 3, A_I16, 3, 2);
  gw_array(&w, "a.u32", 4, A_U32, 3, 4);
  gw_array(&w, "a.i32", 5, A_I32, 3, 4);
  gw_array(&w, "a.f32", 6, A_F32, 3, 4);
  gw_array(&w, "a.bool", 7, A_BOOL, 3, 1);
  gw_array(&w, "a.u64", 10, A_U64, 3, 8);
  gw_array(&w, "a.i64", 11, A_I64, 3, 8);
  gw_array(&w, "a.f64", 12, A_F64, 3, 8);
  gw_array_str(&w, "a.str", A_STR, 4);
  gw_array(&w, "a.empty", 4, NULL, 0, 4);
  gw_array_str(&w, "a.empty_str", NULL, 0);
  /* [[1, 2] (u32), ["x"] (string), [] (i8), [[7]] (array of u8 arrays)] */
  gw_key(&w, "a.nested", 9);
  wb_u32(&w.kv, 9), wb_u64(&w.kv, 4);
  wb_u32(&w.kv, 4), wb_u64(&w.kv, 2), wb_u32(&w.kv, 1), wb_u32(&w.kv, 2);
  wb_u32(&w.kv, 8), wb_u64(&w.kv, 1), wb_str(&w.kv, "x");
  wb_u32(&w.kv, 1), wb_u64(&w.kv, 0);
  wb_u32(&w.kv, 9), wb_u64(&w.kv, 1), wb_u32(&w.kv, 0), wb_u64(&w.kv, 1), wb_u8(&w.kv, 7);
  gw_key(&w, "z.last", 4), wb_u32(&w.kv, 77);
  for (i = 0; i < N_SAMPLE_T; i++)
    SAMPLE_T[i].off =
        gw_tensor(&w, SAMPLE_T[i].name, SAMPLE_T[i].type, SAMPLE_T[i].n_dims, SAMPLE_T[i].ne);
  gw_finish(&w, out);
  gw_free(&w);
}

/* Checks a numeric array key against the expected packed elements. */
static void check_array(velo_gguf *g, const char *key, velo_gguf_type type, const void *want,
                        uint64_t count, size_t esize) {
  velo_gguf_type et = (velo_gguf_type)-1;
  uint64_t n = 99;
  const void *data = NULL;
  velo_error err;
  velo_status st;
  velo_error_init(&err);
  st = api->get_array(g, key, &et, &n, &data, &err);
  CHECK(st == VELO_OK && et == type && n == count, "%s: %s type %d count %" PRIu64, key,
        err.message, (int)et, n);
  if (st == VELO_OK && n == count && count)
    CHECK(memcmp(data, want, count * esize) == 0, "%s data", key);
}

/* Checks st is code and the message contains each of up to three words. */
static void check_err(velo_status st, const velo_error *err, velo_status code, const char *w1,
                      const char *w2, const char *w3, const char *what) {
  CHECK(st == code, "%s: got %s want %s (%s)", what, velo_status_name(st), velo_status_name(code),
        err->message);
  CHECK(err->code == code, "%s: err->code %s", what, velo_status_name(err->code));
  if (w1)
    CHECK(strstr(err->message, w1) != NULL, "%s: message lacks \"%s\": %s", what, w1, err->message);
  if (w2)
    CHECK(strstr(err->message, w2) != NULL, "%s: message lacks \"%s\": %s", what, w2, err->message);
  if (w3)
    CHECK(strstr(err->message, w3) != NULL, "%s: message lacks \"%s\": %s", what, w3, err->message);
}

static void test_sample(uint32_t version, uint32_t align) {
  wbuf b;
  velo_gguf *g = NULL;
  velo_error err;
  velo_status st;
  int64_t v = 0;
  double d = 0;
  bool bo = false;
  const char *s = NULL;
  size_t n = 0, i, want_align = align ? align : 32;
  velo_gguf_type et;
  uint64_t count;
  const void *data;

  build_sample(&b, version, align);
  st = open_bytes(b.p, b.n, &g, &err);
  CHECK(st == VELO_OK, "open sample v%u align %u: %s", version, align, err.message);
  if (st != VELO_OK) {
    wb_free(&b);
    return;
  }
  CHECK(api->version(g) == version, "version");
  CHECK(api->alignment(g) == want_align, "alignment %zu", api->alignment(g));
  CHECK(api->file_size(g) == b.n, "file_size");
  CHECK(strcmp(api->path(g), tmp_file) == 0, "path");
  CHECK(api->kv_count(g) == (align ? 33 : 32), "kv_count %" PRId64, api->kv_count(g));

  /* Order and names. */
  s = api->key_name(g, 0, &n);
  CHECK(s && n == 20 && memcmp(s, "general.architecture", 20) == 0, "key 0");
  s = api->key_name(g, api->kv_count(g) - 1, &n);
  CHECK(s && n == 6 && memcmp(s, "z.last", 6) == 0, "last key");
  CHECK(api->key_name(g, -1, &n) == NULL && api->key_name(g, api->kv_count(g), &n) == NULL,
        "key_name range");
  CHECK(
      api->find_key(g, "s.u8") >= 0 && api->find_key(g, "s.u") == -1 && api->find_key(g, "") == -1,
      "find_key");
  CHECK(api->kv_type(g, api->find_key(g, "s.f64")) == VELO_GGUF_FLOAT64, "kv_type");
  CHECK((int)api->kv_type(g, 1000) == -1, "kv_type out of range");
  count = 5;
  CHECK(!api->kv_array_info(g, api->find_key(g, "s.u8"), &et, &count) && count == 0,
        "array_info of scalar");
  CHECK(!api->kv_array_info(g, -3, &et, &count), "array_info out of range");

  /* Integers. */
#define INT_IS(key, want)                                                                       \
  do {                                                                                          \
    v = 0;                                                                                      \
    st = api->get_int(g, key, &v, &err);                                                        \
    CHECK(st == VELO_OK && v == (int64_t)(want), "%s = %" PRId64 " (%s)", key, v, err.message); \
  } while (0)
  INT_IS("s.u8", 200);
  INT_IS("s.i8", -100);
  INT_IS("s.u16", 65535);
  INT_IS("s.i16", -32768);
  INT_IS("s.u32", 4294967295u);
  INT_IS("s.i32", INT32_MIN);
  INT_IS("s.u64", INT64_MAX);
  INT_IS("s.i64", INT64_MIN);
  INT_IS("s.bool", 1);
  INT_IS("s.false", 0);
  INT_IS("z.last", 77);
  if (align) INT_IS("general.alignment", align);
#undef INT_IS
  st = api->get_int(g, "s.u64big", &v, &err);
  check_err(st, &err, VELO_OUT_OF_RANGE, "s.u64big", "9223372036854775808", NULL,
            "u64 > INT64_MAX");
  st = api->get_int(g, "s.f32", &v, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "\"s.f32\"", "FLOAT32", "integer", "get_int on f32");
  st = api->get_int(g, "no.such.key", &v, &err);
  check_err(st, &err, VELO_NOT_FOUND, "\"no.such.key\"", "not found", NULL, "get_int missing");
  st = api->get_int(g, "a.u8", &v, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "ARRAY of UINT8", NULL, NULL, "get_int on array");
  st = api->get_int(g, "s.u8", NULL, NULL);
  CHECK(st == VELO_OK, "NULL out and err allowed");
  st = api->get_int(g, "no.such.key", NULL, NULL);
  CHECK(st == VELO_NOT_FOUND, "NOT_FOUND without err");

  /* Floats. */
  st = api->get_float(g, "s.f32", &d, &err);
  CHECK(st == VELO_OK && d == 1.5, "f32 %g", d);
  st = api->get_float(g, "s.f64", &d, &err);
  CHECK(st == VELO_OK && d == 1e-300, "f64 %g", d);
  st = api->get_float(g, "s.u32", &d, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "\"s.u32\"", "UINT32", "FLOAT32 or FLOAT64",
            "get_float on u32");

  /* Bools. */
  st = api->get_bool(g, "s.bool", &bo, &err);
  CHECK(st == VELO_OK && bo, "bool true");
  st = api->get_bool(g, "s.false", &bo, &err);
  CHECK(st == VELO_OK && !bo, "bool false");
  st = api->get_bool(g, "s.u8", &bo, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "\"s.u8\"", "UINT8", "BOOL", "get_bool on u8");

  /* Strings. */
  st = api->get_string(g, "s.str", &s, &n, &err);
  CHECK(st == VELO_OK && n == 12 && memcmp(s, "hello, world", 12) == 0, "string");
  st = api->get_string(g, "s.empty", &s, &n, &err);
  CHECK(st == VELO_OK && n == 0 && s != NULL, "empty string");
  st = api->get_string(g, "a.str", &s, &n, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "\"a.str\"", "ARRAY of STRING", "wanted STRING",
            "get_string on array");

  /* Numeric arrays. */
  check_array(g, "a.u8", VELO_GGUF_UINT8, A_U8, 3, 1);
  check_array(g, "a.i8", VELO_GGUF_INT8, A_I8, 3, 1);
  check_array(g, "a.u16", VELO_GGUF_UINT16, A_U16, 3, 2);
  check_array(g, "a.i16", VELO_GGUF_INT16, A_I16, 3, 2);
  check_array(g, "a.u32", VELO_GGUF_UINT32, A_U32, 3, 4);
  check_array(g, "a.i32", VELO_GGUF_INT32, A_I32, 3, 4);
  check_array(g, "a.f32", VELO_GGUF_FLOAT32, A_F32, 3, 4);
  check_array(g, "a.bool", VELO_GGUF_BOOL, A_BOOL, 3, 1);
  check_array(g, "a.u64", VELO_GGUF_UINT64, A_U64, 3, 8);
  check_array(g, "a.i64", VELO_GGUF_INT64, A_I64, 3, 8);
  check_array(g, "a.f64", VELO_GGUF_FLOAT64, A_F64, 3, 8);
  check_array(g, "a.empty", VELO_GGUF_UINT32, NULL, 0, 4);
  st = api->get_array(g, "s.u32", &et, &count, &data, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "\"s.u32\"", "UINT32", "ARRAY", "get_array on scalar");
  st = api->get_array(g, "a.str", &et, &count, &data, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "ARRAY of STRING", NULL, NULL, "get_array on strings");
  st = api->get_array(g, "a.nested", &et, &count, &data, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "ARRAY of ARRAY", NULL, NULL, "get_array on nested");

  /* String arrays. */
  CHECK(api->kv_array_info(g, api->find_key(g, "a.str"), &et, &count) && et == VELO_GGUF_STRING &&
            count == 4,
        "a.str info");
  for (i = 0; i < 4; i++) {
    st = api->get_array_string(g, "a.str", i, &s, &n, &err);
    CHECK(st == VELO_OK && n == strlen(A_STR[i]) && memcmp(s, A_STR[i], n) == 0, "a.str[%zu]", i);
  }
  st = api->get_array_string(g, "a.str", 4, &s, &n, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "index 4", "\"a.str\"", "4 strings",
            "string index range");
  st = api->get_array_string(g, "a.empty_str", 0, &s, &n, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "index 0", NULL, NULL, "empty string array");
  st = api->get_array_string(g, "a.u8", 0, &s, &n, &err);
  check_err(st, &err, VELO_INVALID_ARGUMENT, "ARRAY of UINT8", "ARRAY of STRING", NULL,
            "strings of u8 array");
  st = api->get_array_string(g, "nope", 0, &s, &n, &err);
  check_err(st, &err, VELO_NOT_FOUND, "\"nope\"", NULL, NULL, "strings of missing key");
  CHECK(api->kv_array_info(g, api->find_key(g, "a.nested"), &et, &count) && et == VELO_GGUF_ARRAY &&
            count == 4,
        "nested info");
  CHECK(api->kv_array_info(g, api->find_key(g, "a.empty_str"), &et, &count) &&
            et == VELO_GGUF_STRING && count == 0,
        "empty string array info");

  /* Tensors. */
  CHECK(api->tensor_count(g) == (int64_t)N_SAMPLE_T, "tensor_count");
  for (i = 0; i < N_SAMPLE_T; i++) {
    const sample_tensor *t = &SAMPLE_T[i];
    velo_gguf_tensor_info ti;
    int64_t k = api->find_tensor(g, t->name), rows = t->ne[1] * t->ne[2] * t->ne[3];
    size_t size = velo_dtype_row_bytes((int)t->type, t->ne[0]) * (size_t)rows, j;
    int dd;
    bool same = true;
    CHECK(k == (int64_t)i, "find_tensor(%s) = %" PRId64, t->name, k);
    memset(&ti, 0, sizeof ti);
    ti.struct_size = sizeof ti;
    st = api->tensor_info(g, (int64_t)i, &ti, &err);
    CHECK(st == VELO_OK, "tensor_info %zu: %s", i, err.message);
    CHECK(ti.struct_size == sizeof ti, "struct_size kept");
    CHECK(ti.name_len == strlen(t->name) && memcmp(ti.name, t->name, ti.name_len) == 0, "name %zu",
          i);
    CHECK(ti.dtype == (velo_dtype)t->type && ti.n_dims == (int32_t)t->n_dims, "type/dims %zu", i);
    for (dd = 0; dd < 4; dd++)
      CHECK(ti.ne[dd] == t->ne[dd], "%s ne[%d] = %" PRId64, t->name, dd, ti.ne[dd]);
    CHECK(ti.size == size, "%s size %zu want %zu", t->name, ti.size, size);
    CHECK(ti.offset % want_align == 0, "%s offset %" PRIu64 " aligned to %zu", t->name, ti.offset,
          want_align);
    CHECK(ti.offset + ti.size <= b.n, "%s inside file", t->name);
    CHECK(ti.offset + ti.size <= b.n && memcmp(ti.data, b.p + ti.offset, 1) == 0, "data pointer");
    for (j = 0; j < ti.size && ti.offset + ti.size <= b.n; j++)
      if (((const uint8_t *)ti.data)[j] != pattern(t->off, j)) same = false;
    CHECK(same, "%s data", t->name);
  }
  {
    /* An older caller's shorter struct: fields past struct_size untouched. */
    velo_gguf_tensor_info ti;
    memset(&ti, 0xab, sizeof ti);
    ti.struct_size = (uint32_t)offsetof(velo_gguf_tensor_info, size);
    st = api->tensor_info(g, 0, &ti, &err);
    CHECK(
        st == VELO_OK && ti.n_dims == 2 && ti.struct_size == offsetof(velo_gguf_tensor_info, size),
        "short struct");
    CHECK(((const uint8_t *)&ti)[offsetof(velo_gguf_tensor_info, size)] == 0xab &&
              ((const uint8_t *)&ti)[offsetof(velo_gguf_tensor_info, data)] == 0xab,
          "short struct: size and data untouched");
    st = api->tensor_info(g, (int64_t)N_SAMPLE_T, &ti, &err);
    check_err(st, &err, VELO_INVALID_ARGUMENT, "tensor index 6", "out of range", NULL,
              "tensor_info range");
    st = api->tensor_info(g, -1, &ti, &err);
    check_err(st, &err, VELO_INVALID_ARGUMENT, "out of range", NULL, NULL, "tensor_info -1");
  }
  CHECK(exercise(g), "exercise sample");
  api->close(g);
  wb_free(&b);
}

/* A vocabulary-sized string array (150k strings): O(1) element access. */
static void test_big_string_array(void) {
  gw w;
  wbuf b;
  velo_gguf *g = NULL;
  velo_error err;
  velo_status st;
  char tok[32];
  const char *s;
  size_t n;
  uint64_t i, count = 0;
  velo_gguf_type et;
  bool all = true;
  const uint64_t N = 150000;

  gw_init(&w);
  gw_key(&w, "tokenizer.ggml.tokens", 9);
  wb_u32(&w.kv, 8);
  wb_u64(&w.kv, N);
  for (i = 0; i < N; i++) {
    snprintf(tok, sizeof tok, "tok%" PRIu64, i);
    wb_str(&w.kv, tok);
  }
  gw_finish(&w, &b);
  gw_free(&w);
  st = open_bytes(b.p, b.n, &g, &err);
  CHECK(st == VELO_OK, "open 150k strings: %s", err.message);
  if (st == VELO_OK) {
    CHECK(api->kv_array_info(g, 0, &et, &count) && count == N, "count");
    for (i = N; i-- > 0;) { /* backwards: no help from a sequential cursor */
      snprintf(tok, sizeof tok, "tok%" PRIu64, i);
      st = api->get_array_string(g, "tokenizer.ggml.tokens", i, &s, &n, &err);
      if (st != VELO_OK || n != strlen(tok) || memcmp(s, tok, n) != 0) all = false;
    }
    CHECK(all, "every element of 150k");
    CHECK(api->tensor_count(g) == 0, "no tensors");
    api->close(g);
  }
  wb_free(&b);
}

/* ------------------------------------------------------------------ */
/* Part 3: malformed files                                              */
/* ------------------------------------------------------------------ */

static void test_open_errors(void) {
  velo_gguf *g = (velo_gguf *)&g;
  velo_error err;
  velo_status st;
  char path[700];

  snprintf(path, sizeof path, "%s/does-not-exist.gguf", tmp_dir);
  velo_error_init(&err);
  st = api->open(path, &g, &err);
  check_err(st, &err, VELO_NOT_FOUND, path, strerror(ENOENT), NULL, "missing file");
  CHECK(g == NULL, "out is NULL on failure");

  write_file("", 0);
  st = api->open(tmp_file, &g, &err);
  check_err(st, &err, VELO_DATA_LOSS, tmp_file, "not a GGUF file", "0 bytes", "empty file");

  st = api->open(tmp_dir, &g, &err);
  CHECK(st != VELO_OK && err.message[0], "directory: %s", err.message);

  write_file("GGU", 3);
  st = api->open(tmp_file, &g, &err);
  check_err(st, &err, VELO_DATA_LOSS, "not a GGUF file", NULL, NULL, "3-byte file");

  write_file("PK\x03\x04 this is a zip", 19);
  st = api->open(tmp_file, &g, &err);
  check_err(st, &err, VELO_DATA_LOSS, "not a GGUF file", "PK\\x03\\x04", "byte offset 0",
            "zip file");

  st = api->open(NULL, &g, &err);
  CHECK(st == VELO_INVALID_ARGUMENT, "NULL path");
  api->close(NULL);
  CHECK(velo_gguf_reader.struct_size == sizeof(velo_gguf_api), "table size");
}

/* Truncates the sample file at every length: all shorter files fail with
 * DATA_LOSS and a message, the whole one opens. */
static void test_truncations(void) {
  wbuf b;
  size_t len;
  long bad = 0;
  build_sample(&b, 3, 64);
  for (len = 0; len <= b.n; len++) {
    velo_gguf *g = NULL;
    velo_error err;
    velo_status st = open_bytes(b.p, len, &g, &err);
    if (len < b.n) {
      bool ok = st == VELO_DATA_LOSS && g == NULL && err.message[0] &&
                strstr(err.message, tmp_file) && strstr(err.message, "byte offset");
      if (!ok) {
        bad++;
        fprintf(stderr, "truncated at %zu: %s %s\n", len, velo_status_name(st), err.message);
      }
    } else {
      CHECK(st == VELO_OK, "full file opens: %s", err.message);
    }
    api->close(g);
  }
  CHECK(bad == 0, "%ld of %zu truncations misbehaved", bad, b.n);
  check_count += (long)b.n; /* one check per truncated length */
  wb_free(&b);
}

/* Opens w's file and expects DATA_LOSS with the given words in the message. */
static void expect_corrupt(gw *w, const char *w1, const char *w2, const char *what) {
  wbuf b;
  velo_gguf *g = NULL;
  velo_error err;
  velo_status st;
  gw_finish(w, &b);
  st = open_bytes(b.p, b.n, &g, &err);
  check_err(st, &err, VELO_DATA_LOSS, w1, w2, "byte offset", what);
  CHECK(strncmp(err.message, "gguf: ", 6) == 0 && strstr(err.message, tmp_file),
        "%s: names the path: %s", what, err.message);
  if (g) api->close(g);
  wb_free(&b);
  gw_free(w);
  gw_init(w);
}

/* Adds one valid small tensor (F32 [32]) to w. */
static void add_ok_tensor(gw *w, const char *name) {
  int64_t ne[1] = {32};
  gw_tensor(w, name, VELO_DTYPE_F32, 1, ne);
}

static void test_corruptions(void) {
  gw w;
  wbuf b;
  uint64_t ne[5];
  velo_gguf *g;
  velo_error err;
  int i;

  gw_init(&w);
  /* Header. */
  build_sample(&b, 3, 0);
  memcpy(b.p, "GGUX", 4);
  CHECK(open_bytes(b.p, b.n, &g, &err) == VELO_DATA_LOSS &&
            strstr(err.message, "not a GGUF file") && strstr(err.message, "GGUX") &&
            strstr(err.message, "byte offset 0"),
        "bad magic: %s", err.message);
  wb_free(&b);
  w.version = 1, expect_corrupt(&w, "unsupported GGUF version 1", "byte offset 4", "version 1");
  w.version = 4, expect_corrupt(&w, "unsupported GGUF version 4", NULL, "version 4");
  w.version = 0x03000000u, expect_corrupt(&w, "big-endian", NULL, "big-endian version");
  gw_key(&w, "a", 4), wb_u32(&w.kv, 1);
  w.force_counts = true, w.n_kv_header = 1ull << 60, w.n_t_header = 0;
  expect_corrupt(&w, "kv count 1152921504606846976", "cannot fit", "huge kv count");
  gw_key(&w, "a", 4), wb_u32(&w.kv, 1);
  w.force_counts = true, w.n_kv_header = 1, w.n_t_header = 1ull << 60;
  expect_corrupt(&w, "tensor count 1152921504606846976", "cannot fit", "huge tensor count");
  gw_key(&w, "a", 4), wb_u32(&w.kv, 1);
  w.force_counts = true, w.n_kv_header = 2, w.n_t_header = 0;
  expect_corrupt(&w, "kv count 2", "cannot fit", "kv count one too many");

  /* Strings and values. */
  wb_u64(&w.kv, 1ull << 62), wb_bytes(&w.kv, "abcdefghijklmnopqrstuvwxyz", 26), w.n_kv = 1;
  expect_corrupt(&w, "kv 0: key length 4611686018427387904", "runs past end of file",
                 "huge key length");
  gw_key(&w, "s", 8), wb_u64(&w.kv, 1ull << 62), wb_bytes(&w.kv, "abcdefghijklmnopqrstuvwxyz", 26);
  expect_corrupt(&w, "kv 0 (\"s\"): string value length 4611686018427387904", "runs past end",
                 "huge string length");
  gw_key(&w, "s", 8), wb_u64(&w.kv, UINT64_MAX), wb_bytes(&w.kv, "abcdefghijklmnopqrstuvwxyz", 26);
  expect_corrupt(&w, "string value length 18446744073709551615", "runs past end",
                 "string length 2^64-1");
  gw_key(&w, "arr", 9), wb_u32(&w.kv, 4), wb_u64(&w.kv, 1ull << 61), wb_u32(&w.kv, 5);
  expect_corrupt(&w, "array of 2305843009213693952 UINT32 elements", "runs past end",
                 "huge array count");
  gw_key(&w, "arr", 9), wb_u32(&w.kv, 8), wb_u64(&w.kv, 1ull << 40), wb_str(&w.kv, "x");
  expect_corrupt(&w, "array of 1099511627776 strings", "runs past end", "huge string array count");
  gw_key(&w, "arr", 9), wb_u32(&w.kv, 9), wb_u64(&w.kv, 1ull << 40), wb_u32(&w.kv, 0),
      wb_u64(&w.kv, 0);
  expect_corrupt(&w, "array of 1099511627776 arrays", "runs past end", "huge nested array count");
  gw_key(&w, "arr", 9), wb_u32(&w.kv, 8), wb_u64(&w.kv, 2), wb_str(&w.kv, "x"), wb_u64(&w.kv, 1000);
  wb_bytes(&w.kv, "0123456789", 10);
  expect_corrupt(&w, "array string length 1000", "runs past end", "string element too long");
  gw_key(&w, "v", 13), wb_u32(&w.kv, 0);
  expect_corrupt(&w, "kv 0 (\"v\"): unknown value type 13", "byte offset 33", "value type 13");
  gw_key(&w, "v", 0xffffffffu), wb_u32(&w.kv, 0);
  expect_corrupt(&w, "unknown value type 4294967295", NULL, "value type 2^32-1");
  gw_key(&w, "arr", 9), wb_u32(&w.kv, 13), wb_u64(&w.kv, 1), wb_u32(&w.kv, 0);
  expect_corrupt(&w, "unknown array element type 13", NULL, "array element type 13");
  gw_key(&w, "arr", 9), wb_u32(&w.kv, 9), wb_u64(&w.kv, 1), wb_u32(&w.kv, 99), wb_u64(&w.kv, 0);
  expect_corrupt(&w, "unknown array element type 99", NULL, "nested element type 99");
  gw_key(&w, "deep", 9);
  for (i = 0; i < 20; i++) wb_u32(&w.kv, 9), wb_u64(&w.kv, 1);
  wb_u32(&w.kv, 0), wb_u64(&w.kv, 0);
  expect_corrupt(&w, "nested deeper than 8", NULL, "nesting depth 21");
  gw_key(&w, "b", 7), wb_u8(&w.kv, 2);
  expect_corrupt(&w, "BOOL value 2", NULL, "bool 2");
  gw_key(&w, "b", 9), wb_u32(&w.kv, 7), wb_u64(&w.kv, 3), wb_u8(&w.kv, 1), wb_u8(&w.kv, 0),
      wb_u8(&w.kv, 9);
  expect_corrupt(&w, "BOOL value 9", NULL, "bool array");
  gw_key(&w, "dup", 4), wb_u32(&w.kv, 1);
  gw_key(&w, "other", 4), wb_u32(&w.kv, 1);
  gw_key(&w, "dup", 8), wb_str(&w.kv, "x");
  expect_corrupt(&w, "kv 2 (\"dup\"): duplicate key (first defined by kv 0)", NULL,
                 "duplicate key");
  gw_key(&w, "k\x01\xff\"", 4), wb_u32(&w.kv, 1), wb_u32(&w.kv, 99);
  w.n_kv = 1, w.force_counts = true, w.n_kv_header = 1, w.n_t_header = 1;
  expect_corrupt(&w, "tensor count 1", "cannot fit", "tensor count one too many");
  gw_key(&w, "k\x01\xff\"", 13), wb_u32(&w.kv, 1);
  expect_corrupt(&w, "(\"k\\x01\\xff\\x22\")", "unknown value type 13",
                 "odd bytes in a key are escaped");

  /* Alignment. */
  gw_key(&w, "general.alignment", 4), wb_u32(&w.kv, 0), add_ok_tensor(&w, "t");
  expect_corrupt(&w, "alignment 0 is not a non-zero power of two", NULL, "alignment 0");
  gw_key(&w, "general.alignment", 4), wb_u32(&w.kv, 3), add_ok_tensor(&w, "t");
  expect_corrupt(&w, "alignment 3 is not a non-zero power of two", NULL, "alignment 3");
  gw_key(&w, "general.alignment", 10), wb_u64(&w.kv, 32), add_ok_tensor(&w, "t");
  expect_corrupt(&w, "general.alignment has type UINT64, must be UINT32", NULL, "alignment type");

  /* Tensor infos.  With no kvs the first n_dims field is at byte 24+8+1. */
  ne[0] = 32, gw_tensor_raw(&w, "t", 0, ne, 0, 0);
  expect_corrupt(&w, "tensor info 0 (\"t\"): n_dims 0 is outside 1..4", "byte offset 33",
                 "n_dims 0");
  ne[0] = ne[1] = ne[2] = ne[3] = ne[4] = 1, gw_tensor_raw(&w, "t", 5, ne, 0, 0);
  expect_corrupt(&w, "n_dims 5 is outside 1..4", NULL, "n_dims 5");
  ne[0] = 32, ne[1] = (uint64_t)-3, gw_tensor_raw(&w, "t", 2, ne, 0, 0);
  expect_corrupt(&w, "dimension ne[1] = -3 is not positive", "byte offset 45",
                 "negative dimension");
  ne[0] = 0, gw_tensor_raw(&w, "t", 1, ne, 0, 0);
  expect_corrupt(&w, "dimension ne[0] = 0 is not positive", NULL, "zero dimension");
  ne[0] = 1ull << 32, ne[1] = 1ull << 31, gw_tensor_raw(&w, "t", 2, ne, 0, 0);
  expect_corrupt(&w, "overflow int64", NULL, "dims overflow");
  ne[0] = 1ull << 40, ne[1] = 3, gw_tensor_raw(&w, "t", 2, ne, 0, 0);
  expect_corrupt(&w, "data [offset 96+13194139533312] runs past end of file (96 bytes)", NULL,
                 "huge tensor");
  ne[0] = 1ull << 62, gw_tensor_raw(&w, "t", 1, ne, VELO_DTYPE_F32, 0);
  expect_corrupt(&w, "data size of F32 tensor overflows", NULL, "row size overflows 64 bits");
  ne[0] = 1ull << 60, ne[1] = 4, gw_tensor_raw(&w, "t", 2, ne, VELO_DTYPE_F64, 0);
  expect_corrupt(&w, "data size of F64 tensor overflows", NULL, "size overflows 64 bits");
  ne[0] = 32, gw_tensor_raw(&w, "t", 1, ne, 99, 0);
  expect_corrupt(&w, "unknown tensor type 99", NULL, "type 99");
  ne[0] = 32, gw_tensor_raw(&w, "t", 1, ne, 4, 0);
  expect_corrupt(&w, "unknown tensor type 4", NULL, "removed type 4 (Q4_2)");
  /* ggml types Velo has no dtype for: named, and UNIMPLEMENTED, not corruption */
  static const struct { uint32_t id; const char *name; } ggml_only[] = {
      {34, "TQ1_0"}, {35, "TQ2_0"}, {39, "MXFP4"}, {31, "Q4_0_4_4"}};
  for (size_t k = 0; k < sizeof ggml_only / sizeof ggml_only[0]; k++) {
    char want[64];
    snprintf(want, sizeof want, "tensor type %u (ggml's %s) is not supported by Velo",
             ggml_only[k].id, ggml_only[k].name);
    ne[0] = 256, gw_tensor_raw(&w, "t", 1, ne, ggml_only[k].id, 0);
    gw_finish(&w, &b);
    velo_gguf *gt = NULL;
    velo_error et;
    velo_status st = open_bytes(b.p, b.n, &gt, &et);
    check_err(st, &et, VELO_UNIMPLEMENTED, want, "tensor info 0", NULL, ggml_only[k].name);
    if (gt) api->close(gt);
    wb_free(&b);
    gw_free(&w);
    gw_init(&w);
  }
  ne[0] = 48, ne[1] = 2, gw_tensor_raw(&w, "t", 2, ne, VELO_DTYPE_Q4_0, 0);
  expect_corrupt(&w, "ne[0] = 48 is not a multiple of the Q4_0 block size 32", NULL, "Q4_0 row 48");
  add_ok_tensor(&w, "a");
  ne[0] = 32, gw_tensor_raw(&w, "b", 1, ne, 0, 132);
  expect_corrupt(&w, "tensor info 1 (\"b\"): data offset 132 is not a multiple of the alignment 32",
                 NULL, "unaligned offset");
  add_ok_tensor(&w, "a");
  ne[0] = 32, gw_tensor_raw(&w, "b", 1, ne, 0, 1024);
  expect_corrupt(&w, "tensor info 1 (\"b\"): data [offset", "+128] runs past end of file",
                 "data past end");
  ne[0] = 32, gw_tensor_raw(&w, "b", 1, ne, 0, UINT64_MAX - 31);
  expect_corrupt(&w, "data offset 18446744073709551584 overflows", NULL, "offset overflow");
  add_ok_tensor(&w, "a");
  add_ok_tensor(&w, "a");
  expect_corrupt(&w,
                 "tensor info 1 (\"a\"): duplicate tensor name (first defined by tensor info 0)",
                 NULL, "duplicate tensor name");
  add_ok_tensor(&w, "a");
  add_ok_tensor(&w, "b");
  ne[0] = 64, gw_tensor_raw(&w, "c", 1, ne, 0, 0);
  expect_corrupt(&w, "overlaps tensor info", NULL, "overlapping tensors");

  /* Version 2 has the same layout and is accepted. */
  w.version = 2;
  add_ok_tensor(&w, "a");
  gw_finish(&w, &b);
  g = NULL;
  CHECK(open_bytes(b.p, b.n, &g, &err) == VELO_OK && api->version(g) == 2, "version 2: %s",
        err.message);
  api->close(g);
  wb_free(&b);
  gw_free(&w);
}

/* xorshift64*: a fixed random stream, so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1dull;
}

/* Random changes to a valid file: 1-4 bytes set to random values, bits
 * flipped, or u64 fields made huge.  Never a crash; a file that still opens
 * must keep every invariant. */
static void test_random_flips(void) {
  wbuf b;
  uint8_t *c;
  int iter, n_ok = 0, n_bad_open = 0;
  const int N = 4000;
  build_sample(&b, 3, 0);
  c = malloc(b.n);
  for (iter = 0; iter < N; iter++) {
    velo_gguf *g = NULL;
    velo_error err;
    velo_status st;
    int k, nflip = 1 + (int)(rng() % 4);
    memcpy(c, b.p, b.n);
    for (k = 0; k < nflip; k++) {
      /* Most of the sample is metadata; aim 3/4 of the changes there.  One
       * rng() call per statement keeps the stream the same for every compiler. */
      uint64_t range = rng() % 4 ? 1200 : b.n;
      size_t pos = (size_t)(rng() % range % b.n);
      switch (rng() % 3) {
        case 0:
          c[pos] = (uint8_t)rng();
          break;
        case 1:
          c[pos] ^= (uint8_t)(1u << (rng() % 8));
          break;
        default:
          c[pos] = 0xff;
          break;
      }
    }
    st = open_bytes(c, b.n, &g, &err);
    if (st == VELO_OK) {
      n_ok++;
      if (!exercise(g)) n_bad_open++;
      api->close(g);
    } else if (!err.message[0] || st != VELO_DATA_LOSS) {
      n_bad_open++;
      fprintf(stderr, "flip %d: %s with message \"%s\"\n", iter, velo_status_name(st), err.message);
    }
  }
  CHECK(n_bad_open == 0, "%d of %d changed files misbehaved", n_bad_open, N);
  check_count += N;
  printf("gguf: random changes: %d of %d files still valid\n", n_ok, N);
  free(c);
  wb_free(&b);
}

int main(int argc, char **argv) {
  const char *shared = argc > 1 ? argv[1] : VELO_SHARED_DIR;
  struct stat sb;
  tmp_setup();

  if (stat(shared, &sb) != 0) {
    fprintf(stderr, "test_gguf: shared data folder %s: %s\n", shared, strerror(errno));
    check_failed++;
  } else {
    test_stories(shared);
    test_dir(shared, "models", false);
    test_dir(shared, "vocab", true);
  }
  test_sample(3, 0);
  test_sample(3, 64);
  test_sample(2, 128);
  test_big_string_array();
  test_open_errors();
  test_truncations();
  test_corruptions();
  test_random_flips();

  tmp_cleanup();
  return check_summary("gguf");
}
