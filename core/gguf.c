/*
 * gguf.c - the host's memory-mapped, validated GGUF reader (versions 2 and 3).
 *
 * This file maps a GGUF file read-only, walks it once at open and checks
 * every count, length, offset and size against the bytes that are really
 * there before using it, then builds an index: one entry per metadata
 * key/value (with per-element offsets for string arrays, so element i of a
 * 150k-token vocabulary is O(1)), one entry per tensor (dtype, shape,
 * absolute offset and byte size), and two hash tables for lookups by name.
 * After open nothing is written, so every accessor may run on any thread.
 *
 * Layout (ggml docs/gguf.md, all little-endian):
 *   "GGUF" u32 version  u64 tensor_count  u64 kv_count
 *   kv_count x { string key; u32 value_type; value }
 *   tensor_count x { string name; u32 n_dims; u64 ne[n_dims]; u32 ggml_type;
 *                    u64 offset (relative to the data section) }
 *   padding to general.alignment (u32, default 32), then the data section.
 *   string = u64 length + bytes; array = u32 elem_type + u64 count + elems.
 *
 * Any problem at open is DATA_LOSS with a message "gguf: PATH: WHERE: WHAT
 * at byte offset N".  Memory allocated at open is bounded by the file size:
 * every count is checked against the bytes left before anything is sized
 * by it.  Not defended against: another process truncating the file while
 * it is mapped (the kernel then raises SIGBUS on access).
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif

#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ARRAY_DEPTH 8                         /* nesting of arrays inside arrays */
#define GGUF_TYPE_COUNT 13                             /* value types 0..12 */
#define GGUF_MIN_KV_BYTES (8 + 4 + 1)                  /* empty key, u8 value */
#define GGUF_MIN_TENSOR_INFO_BYTES (8 + 4 + 8 + 4 + 8) /* empty name, 1 dim */
#define GGUF_MIN_ARRAY_HEADER_BYTES (4 + 8)

/* A byte range in the mapping; the first member of both index entries so
 * that the name index can read the name of either. */
typedef struct gguf_strref {
  uint64_t off; /* from the start of the file */
  uint64_t len;
} gguf_strref;

/* One metadata key/value. */
typedef struct gguf_kv {
  gguf_strref key;
  uint32_t type;      /* velo_gguf_type */
  uint64_t val_off;   /* scalar: the value; STRING: its bytes; ARRAY: first element */
  uint64_t str_len;   /* STRING: length in bytes */
  uint32_t elem_type; /* ARRAY: element type */
  uint64_t count;     /* ARRAY: element count */
  uint64_t *str_offs; /* ARRAY of STRING: offset of each element's u64 length */
} gguf_kv;

/* One tensor info. */
typedef struct gguf_tensor {
  gguf_strref name;
  uint32_t dtype;
  int32_t n_dims;
  int64_t ne[VELO_MAX_DIMS];
  uint64_t rel_off;   /* as stored: relative to the data section */
  uint64_t abs_off;   /* from the start of the file */
  uint64_t size;      /* bytes */
  uint64_t field_off; /* where the offset field is, for messages */
} gguf_tensor;

/* Open-addressing hash table from names to entry indices.  entries points at
 * an array of structs of `stride` bytes that each start with a gguf_strref. */
typedef struct gguf_name_index {
  int64_t *slots; /* entry index + 1; 0 = empty */
  uint64_t mask;  /* capacity - 1 (capacity is a power of two) */
  const void *entries;
  size_t stride;
} gguf_name_index;

struct velo_gguf {
  char *path; /* NUL-terminated copy */
  const uint8_t *base;
  uint64_t size;
  uint32_t version;
  size_t alignment;
  uint64_t data_off; /* start of the data section */
  int64_t n_kv;
  gguf_kv *kvs;
  gguf_name_index kv_index;
  int64_t n_tensors;
  gguf_tensor *tensors;
  gguf_name_index tensor_index;
};

/* The state of the walk through the file at open. */
typedef struct gguf_parser {
  velo_gguf *g;
  uint64_t pos; /* invariant: pos <= g->size */
  velo_error *err;
  char path_msg[200]; /* the path as shown in messages (shortened if long) */
  char where[200];    /* "kv 3 (\"general.name\")" or "" */
} gguf_parser;

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

/* Little-endian loads from the mapping; p must have the bytes (checked by
 * the caller).  Can't fail. */
static uint32_t load_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t load_u64(const uint8_t *p) {
  return (uint64_t)load_u32(p) | (uint64_t)load_u32(p + 4) << 32;
}

/* Spec name of a value type ("UINT32"), or NULL for an unknown one. */
static const char *type_name(uint32_t t) {
  static const char *const names[GGUF_TYPE_COUNT] = {
      "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",  "FLOAT32",
      "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
  return t < GGUF_TYPE_COUNT ? names[t] : NULL;
}

/* Bytes of one scalar of type t; 0 for STRING, ARRAY and unknown types. */
static uint64_t scalar_size(uint32_t t) {
  static const uint8_t sizes[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  return t < GGUF_TYPE_COUNT ? sizes[t] : 0;
}

/* Writes a printable, bounded form of the n bytes at s into out (size cap):
 * bytes outside 0x20..0x7e become \xNN and a long name is cut with "...",
 * so names from a corrupt file can go into a message.  Can't fail. */
static void quote_bytes(char *out, size_t cap, const uint8_t *s, uint64_t n) {
  size_t o = 0;
  uint64_t i;
  for (i = 0; i < n; i++) {
    if (o + 8 >= cap) { /* room for "\xNN" plus "..." and NUL */
      memcpy(out + o, "...", 3);
      o += 3;
      break;
    }
    if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\' && s[i] != '"') {
      out[o++] = (char)s[i];
    } else {
      static const char hex[] = "0123456789abcdef";
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[s[i] >> 4];
      out[o++] = hex[s[i] & 15];
    }
  }
  out[o] = '\0';
}

/* Quotes a caller's key (NUL-terminated) for a message, as quote_bytes. */
static void key_text(char *out, size_t cap, const char *key) {
  quote_bytes(out, cap, (const uint8_t *)key, strlen(key));
}

/* Writes the path as shown in messages: the whole path, or "..." and its
 * last part when it is too long for one message.  Can't fail. */
static void shorten_path(char *out, size_t cap, const char *path) {
  size_t n = strlen(path);
  if (n < cap) {
    memcpy(out, path, n + 1);
    return;
  }
  snprintf(out, cap, "...%s", path + n - (cap - 4));
}

/* Thread-safe strerror into buf; returns the text.  Works with both the GNU
 * and the XSI strerror_r. */
static const char *errno_text(int e, char *buf, size_t cap) {
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  return strerror_r(e, buf, cap);
#else
  if (strerror_r(e, buf, cap) != 0) snprintf(buf, cap, "error %d", e);
  return buf;
#endif
}

/* FNV-1a over n bytes. */
static uint64_t hash_bytes(const uint8_t *s, uint64_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  uint64_t i;
  for (i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
  return h;
}

/* ------------------------------------------------------------------ */
/* Name index                                                          */
/* ------------------------------------------------------------------ */

/* Sizes ix for n names of the entries array (stride bytes each).  Returns
 * false if the memory can't be had (ix is then empty but safe to free).
 * n was checked against the file size by the caller. */
static bool index_init(gguf_name_index *ix, uint64_t n, const void *entries, size_t stride) {
  uint64_t cap = 8;
  while (cap < 2 * n) cap <<= 1;
  ix->entries = entries;
  ix->stride = stride;
  ix->mask = cap - 1;
  if (cap > SIZE_MAX / sizeof(int64_t)) {
    ix->slots = NULL;
    return false;
  }
  ix->slots = calloc((size_t)cap, sizeof(int64_t));
  return ix->slots != NULL;
}

/* The name of entry i of the indexed array. */
static const gguf_strref *index_name(const gguf_name_index *ix, int64_t i) {
  return (const gguf_strref *)((const char *)ix->entries + (size_t)i * ix->stride);
}

/* Finds the slot for name (len bytes): the slot holding it, or the empty
 * slot where it would go.  The table is never full (capacity >= 2n). */
static uint64_t index_probe(const gguf_name_index *ix, const uint8_t *base, const void *name,
                            uint64_t len) {
  uint64_t s = hash_bytes(name, len) & ix->mask;
  for (;; s = (s + 1) & ix->mask) {
    int64_t e = ix->slots[s];
    const gguf_strref *r;
    if (e == 0) return s;
    r = index_name(ix, e - 1);
    if (r->len == len && memcmp(base + r->off, name, (size_t)len) == 0) return s;
  }
}

/* Index of the entry named name (len bytes), or -1.  Read-only. */
static int64_t index_find(const gguf_name_index *ix, const uint8_t *base, const char *name,
                          size_t len) {
  if (!ix->slots) return -1;
  return ix->slots[index_probe(ix, base, name, len)] - 1;
}

/* Adds entry i; returns -1 if added, or the index of an earlier entry with
 * the same name (then nothing is added). */
static int64_t index_add(gguf_name_index *ix, const uint8_t *base, int64_t i) {
  const gguf_strref *r = index_name(ix, i);
  uint64_t s = index_probe(ix, base, base + r->off, r->len);
  if (ix->slots[s] != 0) return ix->slots[s] - 1;
  ix->slots[s] = i + 1;
  return -1;
}

/* ------------------------------------------------------------------ */
/* Parser primitives                                                   */
/* ------------------------------------------------------------------ */

/* Fails the open with DATA_LOSS: "gguf: PATH: WHERE: WHAT at byte offset
 * off".  Returns VELO_DATA_LOSS. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static velo_status
fail_at(gguf_parser *p, uint64_t off, const char *fmt, ...) {
  char what[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return velo_error_set(p->err, VELO_DATA_LOSS, "gguf: %s: %s%s%s at byte offset %" PRIu64,
                        p->path_msg, p->where, p->where[0] ? ": " : "", what, off);
}

/* The name of a ggml tensor type id that Velo has no velo_dtype for (so it
 * cannot even lay the tensor out), or NULL for an id ggml never assigned:
 * the first is a file Velo does not support, the second a corrupt one.
 * Ids from ggml's type enum (31-33 and 36-38 were repacked layouts that
 * ggml has since removed from files). */
static const char *ggml_only_type_name(uint32_t id) {
  switch (id) {
    case 31: return "Q4_0_4_4";
    case 32: return "Q4_0_4_8";
    case 33: return "Q4_0_8_8";
    case 34: return "TQ1_0";
    case 35: return "TQ2_0";
    case 36: return "IQ4_NL_4_4";
    case 37: return "IQ4_NL_4_8";
    case 38: return "IQ4_NL_8_8";
    case 39: return "MXFP4";
    default: return NULL;
  }
}

/* Out of memory during open: RESOURCE_EXHAUSTED. */
static velo_status fail_oom(gguf_parser *p, const char *what) {
  return velo_error_set(p->err, VELO_RESOURCE_EXHAUSTED, "gguf: %s: out of memory for %s",
                        p->path_msg, what);
}

/* Bytes from the cursor to the end of the file. */
static uint64_t left(const gguf_parser *p) {
  return p->g->size - p->pos;
}

/* Fails for a field of n bytes that does not fit in what is left. */
static velo_status fail_truncated(gguf_parser *p, uint64_t n, const char *what) {
  return fail_at(p, p->pos,
                 "truncated: %s needs %" PRIu64 " bytes, only %" PRIu64 " left (file is %" PRIu64
                 " bytes)",
                 what, n, left(p), p->g->size);
}

/* Reads a u32 / u64 field named what at the cursor and advances. */
static velo_status read_u32(gguf_parser *p, uint32_t *v, const char *what) {
  if (left(p) < 4) return fail_truncated(p, 4, what);
  *v = load_u32(p->g->base + p->pos);
  p->pos += 4;
  return VELO_OK;
}

static velo_status read_u64(gguf_parser *p, uint64_t *v, const char *what) {
  if (left(p) < 8) return fail_truncated(p, 8, what);
  *v = load_u64(p->g->base + p->pos);
  p->pos += 8;
  return VELO_OK;
}

/* Reads a gguf_string named what: sets *r to its bytes and advances past
 * them.  DATA_LOSS if the length runs past the end of the file. */
static velo_status read_string(gguf_parser *p, gguf_strref *r, const char *what) {
  uint64_t len, len_off = p->pos;
  velo_status st = read_u64(p, &len, what);
  if (st != VELO_OK) return st;
  if (len > left(p)) {
    p->pos = len_off;
    return fail_at(p, len_off,
                   "%s length %" PRIu64 " runs past end of file (%" PRIu64 " bytes left of %" PRIu64
                   ")",
                   what, len, left(p) - 8, p->g->size);
  }
  r->off = p->pos;
  r->len = len;
  p->pos += len;
  return VELO_OK;
}

/* Sets p->where to "LABEL i (\"name\")" for messages. */
static void set_where(gguf_parser *p, const char *label, int64_t i, const gguf_strref *name) {
  char q[96];
  if (!name) {
    snprintf(p->where, sizeof p->where, "%s %" PRId64, label, i);
    return;
  }
  quote_bytes(q, sizeof q, p->g->base + name->off, name->len);
  snprintf(p->where, sizeof p->where, "%s %" PRId64 " (\"%s\")", label, i, q);
}

/* ------------------------------------------------------------------ */
/* Metadata                                                            */
/* ------------------------------------------------------------------ */

/* Checks n BOOL bytes at the cursor are 0 or 1 (the spec says anything else
 * is invalid).  The bytes were checked to be there. */
static velo_status check_bools(gguf_parser *p, uint64_t n) {
  uint64_t i;
  for (i = 0; i < n; i++) {
    uint8_t b = p->g->base[p->pos + i];
    if (b > 1) return fail_at(p, p->pos + i, "BOOL value %u is not 0 or 1", b);
  }
  return VELO_OK;
}

/* Walks the elements of an array whose header (elem_type at type_off,
 * count) has been read; the cursor is at the first element.  depth is the
 * nesting level of this array (1 for a key's own array).  If str_offs is
 * non-NULL (a key's string array) it receives each element's offset. */
static velo_status walk_array(gguf_parser *p, uint32_t elem, uint64_t count, uint64_t type_off,
                              int depth, uint64_t *str_offs) {
  uint64_t esz = scalar_size(elem), i;
  velo_status st;
  if (!type_name(elem)) return fail_at(p, type_off, "unknown array element type %u", elem);
  if (esz) {
    if (count > left(p) / esz)
      return fail_at(p, type_off + 4,
                     "array of %" PRIu64 " %s elements runs past end of file (%" PRIu64
                     " bytes left)",
                     count, type_name(elem), left(p));
    if (elem == VELO_GGUF_BOOL && (st = check_bools(p, count)) != VELO_OK) return st;
    p->pos += count * esz;
    return VELO_OK;
  }
  if (elem == VELO_GGUF_STRING) {
    if (count > left(p) / 8)
      return fail_at(p, type_off + 4,
                     "array of %" PRIu64 " strings runs past end of file (%" PRIu64 " bytes left)",
                     count, left(p));
    for (i = 0; i < count; i++) {
      gguf_strref r;
      if (str_offs) str_offs[i] = p->pos;
      if ((st = read_string(p, &r, "array string")) != VELO_OK) return st;
    }
    return VELO_OK;
  }
  /* elem == ARRAY: each element is itself an array header and elements. */
  if (depth >= GGUF_MAX_ARRAY_DEPTH)
    return fail_at(p, type_off, "arrays nested deeper than %d levels", GGUF_MAX_ARRAY_DEPTH);
  if (count > left(p) / GGUF_MIN_ARRAY_HEADER_BYTES)
    return fail_at(p, type_off + 4,
                   "array of %" PRIu64 " arrays runs past end of file (%" PRIu64 " bytes left)",
                   count, left(p));
  for (i = 0; i < count; i++) {
    uint32_t e2;
    uint64_t c2, t2 = p->pos;
    if ((st = read_u32(p, &e2, "nested array element type")) != VELO_OK) return st;
    if ((st = read_u64(p, &c2, "nested array count")) != VELO_OK) return st;
    if ((st = walk_array(p, e2, c2, t2, depth + 1, NULL)) != VELO_OK) return st;
  }
  return VELO_OK;
}

/* Parses key/value i at the cursor into g->kvs[i] and indexes its key. */
static velo_status parse_kv(gguf_parser *p, int64_t i) {
  velo_gguf *g = p->g;
  gguf_kv *kv = &g->kvs[i];
  uint64_t key_off = p->pos, type_off;
  int64_t dup;
  velo_status st;

  set_where(p, "kv", i, NULL);
  if ((st = read_string(p, &kv->key, "key")) != VELO_OK) return st;
  set_where(p, "kv", i, &kv->key);
  if ((dup = index_add(&g->kv_index, g->base, i)) >= 0)
    return fail_at(p, key_off, "duplicate key (first defined by kv %" PRId64 ")", dup);

  type_off = p->pos;
  if ((st = read_u32(p, &kv->type, "value type")) != VELO_OK) return st;
  if (!type_name(kv->type)) return fail_at(p, type_off, "unknown value type %u", kv->type);
  kv->val_off = p->pos;

  if (kv->type == VELO_GGUF_STRING) {
    gguf_strref r;
    if ((st = read_string(p, &r, "string value")) != VELO_OK) return st;
    kv->val_off = r.off;
    kv->str_len = r.len;
    return VELO_OK;
  }
  if (kv->type == VELO_GGUF_ARRAY) {
    uint64_t elem_off = p->pos;
    if ((st = read_u32(p, &kv->elem_type, "array element type")) != VELO_OK) return st;
    if ((st = read_u64(p, &kv->count, "array count")) != VELO_OK) return st;
    kv->val_off = p->pos;
    if (kv->elem_type == VELO_GGUF_STRING && kv->count > 0 && kv->count <= left(p) / 8) {
      /* Bounded by the bytes left: each string needs at least 8. */
      kv->str_offs = malloc((size_t)kv->count * sizeof(uint64_t));
      if (!kv->str_offs) return fail_oom(p, "string array offsets");
    }
    return walk_array(p, kv->elem_type, kv->count, elem_off, 1, kv->str_offs);
  }
  if (left(p) < scalar_size(kv->type))
    return fail_truncated(p, scalar_size(kv->type), type_name(kv->type));
  if (kv->type == VELO_GGUF_BOOL && (st = check_bools(p, 1)) != VELO_OK) return st;
  p->pos += scalar_size(kv->type);
  return VELO_OK;
}

/* Reads general.alignment (if present) into g->alignment; it must be a
 * UINT32 that is a non-zero power of two. */
static velo_status read_alignment(gguf_parser *p) {
  velo_gguf *g = p->g;
  int64_t i = index_find(&g->kv_index, g->base, "general.alignment", strlen("general.alignment"));
  uint32_t a;
  g->alignment = GGUF_DEFAULT_ALIGNMENT;
  if (i < 0) return VELO_OK;
  set_where(p, "kv", i, &g->kvs[i].key);
  if (g->kvs[i].type != VELO_GGUF_UINT32)
    return fail_at(p, g->kvs[i].val_off, "general.alignment has type %s, must be UINT32",
                   type_name(g->kvs[i].type));
  a = load_u32(g->base + g->kvs[i].val_off);
  if (a == 0 || (a & (a - 1)) != 0)
    return fail_at(p, g->kvs[i].val_off, "alignment %u is not a non-zero power of two", a);
  g->alignment = a;
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Tensor infos                                                        */
/* ------------------------------------------------------------------ */

/* Parses tensor info i at the cursor into g->tensors[i] (shape, type, size,
 * relative offset) and indexes its name.  Data placement is checked later,
 * once the data section's start is known. */
static velo_status parse_tensor_info(gguf_parser *p, int64_t i) {
  velo_gguf *g = p->g;
  gguf_tensor *t = &g->tensors[i];
  uint64_t name_off = p->pos, off, blocks, row_bytes, bbytes;
  uint32_t n_dims, dtype;
  int64_t blk, elems = 1, rows = 1, dup;
  int d;
  velo_status st;

  set_where(p, "tensor info", i, NULL);
  if ((st = read_string(p, &t->name, "tensor name")) != VELO_OK) return st;
  set_where(p, "tensor info", i, &t->name);
  if ((dup = index_add(&g->tensor_index, g->base, i)) >= 0)
    return fail_at(p, name_off, "duplicate tensor name (first defined by tensor info %" PRId64 ")",
                   dup);

  off = p->pos;
  if ((st = read_u32(p, &n_dims, "n_dims")) != VELO_OK) return st;
  if (n_dims < 1 || n_dims > VELO_MAX_DIMS)
    return fail_at(p, off, "n_dims %u is outside 1..%d", n_dims, VELO_MAX_DIMS);
  t->n_dims = (int32_t)n_dims;
  for (d = 0; d < VELO_MAX_DIMS; d++) t->ne[d] = 1;
  for (d = 0; d < (int)n_dims; d++) {
    uint64_t v;
    off = p->pos;
    if ((st = read_u64(p, &v, "dimension")) != VELO_OK) return st;
    if (v == 0 || v > (uint64_t)INT64_MAX)
      return fail_at(p, off, "dimension ne[%d] = %" PRId64 " is not positive", d, (int64_t)v);
    if ((int64_t)v > INT64_MAX / elems)
      return fail_at(p, off,
                     "dimension ne[%d] = %" PRIu64 " makes the element count overflow int64", d, v);
    t->ne[d] = (int64_t)v;
    elems *= (int64_t)v;
    if (d > 0) rows *= (int64_t)v;
  }

  off = p->pos;
  if ((st = read_u32(p, &dtype, "tensor type")) != VELO_OK) return st;
  blk = velo_dtype_block_size((int)dtype);
  if (blk <= 0) {
    const char *ggml = ggml_only_type_name(dtype);
    if (ggml)
      return velo_error_set(p->err, VELO_UNIMPLEMENTED,
                            "gguf: %s: %s: tensor type %u (ggml's %s) is not supported by Velo",
                            p->path_msg, p->where, dtype, ggml);
    return fail_at(p, off, "unknown tensor type %u", dtype);
  }
  if (t->ne[0] % blk != 0)
    return fail_at(p, off,
                   "row length ne[0] = %" PRId64 " is not a multiple of the %s block size %" PRId64,
                   t->ne[0], velo_dtype_name((int)dtype), blk);
  t->dtype = dtype;

  /* size = ne[0]/blk * block bytes * ne[1]*ne[2]*ne[3], checked for overflow. */
  blocks = (uint64_t)(t->ne[0] / blk);
  bbytes = velo_dtype_block_bytes((int)dtype);
  if (blocks > UINT64_MAX / bbytes || (row_bytes = blocks * bbytes) > UINT64_MAX / (uint64_t)rows)
    return fail_at(p, off, "data size of %s tensor overflows 64 bits", velo_dtype_name((int)dtype));
  t->size = row_bytes * (uint64_t)rows;

  t->field_off = p->pos;
  if ((st = read_u64(p, &t->rel_off, "tensor data offset")) != VELO_OK) return st;
  if (t->rel_off % g->alignment != 0)
    return fail_at(p, t->field_off,
                   "data offset %" PRIu64 " is not a multiple of the alignment %zu", t->rel_off,
                   g->alignment);
  return VELO_OK;
}

/* A tensor's data range, for the overlap check. */
typedef struct gguf_range {
  uint64_t off, size;
  int64_t idx;
} gguf_range;

/* qsort order: by offset, then by index (so the order is total). */
static int range_cmp(const void *a, const void *b) {
  const gguf_range *x = a, *y = b;
  if (x->off != y->off) return x->off < y->off ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Places every tensor in the data section (which starts at g->data_off) and
 * checks that each lies inside the file and that no two overlap. */
static velo_status place_tensors(gguf_parser *p) {
  velo_gguf *g = p->g;
  gguf_range *r;
  int64_t i;
  velo_status st = VELO_OK;

  for (i = 0; i < g->n_tensors; i++) {
    gguf_tensor *t = &g->tensors[i];
    set_where(p, "tensor info", i, &t->name);
    if (g->data_off > g->size || t->rel_off > g->size - g->data_off ||
        t->size > g->size - g->data_off - t->rel_off) {
      if (t->rel_off > UINT64_MAX - g->data_off)
        return fail_at(p, t->field_off, "data offset %" PRIu64 " overflows", t->rel_off);
      return fail_at(p, t->field_off,
                     "data [offset %" PRIu64 "+%" PRIu64 "] runs past end of file (%" PRIu64
                     " bytes)",
                     g->data_off + t->rel_off, t->size, g->size);
    }
    t->abs_off = g->data_off + t->rel_off;
  }
  if (g->n_tensors < 2) return VELO_OK;

  r = malloc((size_t)g->n_tensors * sizeof *r); /* n_tensors was bounded by the file size */
  if (!r) return fail_oom(p, "tensor ranges");
  for (i = 0; i < g->n_tensors; i++) {
    r[i].off = g->tensors[i].abs_off;
    r[i].size = g->tensors[i].size;
    r[i].idx = i;
  }
  qsort(r, (size_t)g->n_tensors, sizeof *r, range_cmp);
  for (i = 1; i < g->n_tensors; i++) {
    const gguf_range *a = &r[i - 1], *b = &r[i];
    char qa[96];
    if (a->off + a->size <= b->off) continue;
    quote_bytes(qa, sizeof qa, g->base + g->tensors[a->idx].name.off, g->tensors[a->idx].name.len);
    set_where(p, "tensor info", b->idx, &g->tensors[b->idx].name);
    st = fail_at(p, g->tensors[b->idx].field_off,
                 "data [offset %" PRIu64 "+%" PRIu64 "] overlaps tensor info %" PRId64
                 " (\"%s\") data [offset %" PRIu64 "+%" PRIu64 "]",
                 b->off, b->size, a->idx, qa, a->off, a->size);
    break;
  }
  free(r);
  return st;
}

/* ------------------------------------------------------------------ */
/* Open and close                                                      */
/* ------------------------------------------------------------------ */

/* Maps path read-only into g (base, size).  NOT_FOUND / PERMISSION_DENIED
 * when it can't be opened, DATA_LOSS for an empty file. */
static velo_status map_file(gguf_parser *p, const char *path) {
  char eb[128];
  struct stat sb;
  void *m;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    velo_status code = e == ENOENT || e == ENOTDIR  ? VELO_NOT_FOUND
                       : e == EACCES || e == EPERM  ? VELO_PERMISSION_DENIED
                       : e == EMFILE || e == ENFILE ? VELO_RESOURCE_EXHAUSTED
                                                    : VELO_UNKNOWN;
    return velo_error_set(p->err, code, "gguf: %s: cannot open: %s", p->path_msg,
                          errno_text(e, eb, sizeof eb));
  }
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    return velo_error_set(p->err, VELO_UNKNOWN, "gguf: %s: cannot stat: %s", p->path_msg,
                          errno_text(e, eb, sizeof eb));
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return velo_error_set(p->err, VELO_INVALID_ARGUMENT, "gguf: %s: not a regular file",
                          p->path_msg);
  }
  if (sb.st_size == 0) {
    close(fd);
    return velo_error_set(p->err, VELO_DATA_LOSS,
                          "gguf: %s: not a GGUF file (empty, 0 bytes) at byte offset 0",
                          p->path_msg);
  }
  if ((uint64_t)sb.st_size > SIZE_MAX) {
    close(fd);
    return velo_error_set(p->err, VELO_RESOURCE_EXHAUSTED, "gguf: %s: file too large to map",
                          p->path_msg);
  }
  m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd); /* the mapping keeps the file */
  if (m == MAP_FAILED) {
    int e = errno;
    return velo_error_set(p->err, e == ENOMEM ? VELO_RESOURCE_EXHAUSTED : VELO_UNKNOWN,
                          "gguf: %s: cannot map %" PRIu64 " bytes: %s", p->path_msg,
                          (uint64_t)sb.st_size, errno_text(e, eb, sizeof eb));
  }
  p->g->base = m;
  p->g->size = (uint64_t)sb.st_size;
  return VELO_OK;
}

/* Checks magic and version and reads the two counts. */
static velo_status parse_header(gguf_parser *p, uint64_t *n_tensors, uint64_t *n_kv) {
  velo_gguf *g = p->g;
  uint32_t version;
  velo_status st;
  if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0) {
    char q[40];
    quote_bytes(q, sizeof q, g->base, g->size < 4 ? g->size : 4);
    return fail_at(p, 0, "not a GGUF file (magic \"%s\"%s, expected \"GGUF\")", q,
                   g->size < 4 ? ", file too short" : "");
  }
  p->pos = 4;
  if ((st = read_u32(p, &version, "version")) != VELO_OK) return st;
  if (version != 2 && version != 3)
    return fail_at(p, 4, "unsupported GGUF version %u (this reader supports 2 and 3%s)", version,
                   (version & 0xffff) == 0 && version != 0 ? "; a big-endian file?" : "");
  g->version = version;
  if ((st = read_u64(p, n_tensors, "tensor count")) != VELO_OK) return st;
  if ((st = read_u64(p, n_kv, "kv count")) != VELO_OK) return st;
  /* Each kv and each tensor info needs a minimum of bytes: counts that can't
   * fit are rejected before anything is sized by them. */
  if (*n_kv > left(p) / GGUF_MIN_KV_BYTES)
    return fail_at(p, 16, "kv count %" PRIu64 " cannot fit in the %" PRIu64 " bytes left", *n_kv,
                   left(p));
  if (*n_tensors > (left(p) - *n_kv * GGUF_MIN_KV_BYTES) / GGUF_MIN_TENSOR_INFO_BYTES)
    return fail_at(p, 8,
                   "tensor count %" PRIu64 " (with kv count %" PRIu64 ") cannot fit in the %" PRIu64
                   " bytes left",
                   *n_tensors, *n_kv, left(p));
  return VELO_OK;
}

/* Everything after the mapping: header, kvs, alignment, tensor infos, data
 * placement.  On failure err is set and g holds whatever was built. */
static velo_status parse_file(gguf_parser *p) {
  velo_gguf *g = p->g;
  uint64_t n_tensors, n_kv, pad;
  int64_t i;
  velo_status st;

  if ((st = parse_header(p, &n_tensors, &n_kv)) != VELO_OK) return st;

  g->kvs = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kvs);
  if (!g->kvs || !index_init(&g->kv_index, n_kv, g->kvs, sizeof *g->kvs))
    return fail_oom(p, "the key index");
  for (i = 0; i < (int64_t)n_kv; i++) {
    g->n_kv = i + 1; /* so close() frees the string offsets of entry i */
    if ((st = parse_kv(p, i)) != VELO_OK) return st;
  }
  if ((st = read_alignment(p)) != VELO_OK) return st;

  p->where[0] = '\0';
  if (n_tensors > left(p) / GGUF_MIN_TENSOR_INFO_BYTES)
    return fail_at(p, p->pos,
                   "tensor count %" PRIu64 " cannot fit in the %" PRIu64
                   " bytes left after the metadata",
                   n_tensors, left(p));
  g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
  if (!g->tensors || !index_init(&g->tensor_index, n_tensors, g->tensors, sizeof *g->tensors))
    return fail_oom(p, "the tensor index");
  g->n_tensors = (int64_t)n_tensors;
  for (i = 0; i < g->n_tensors; i++)
    if ((st = parse_tensor_info(p, i)) != VELO_OK) return st;

  /* The data section starts at the next multiple of the alignment.  With no
   * tensors the file may end before it (vocabulary-only files do). */
  pad = (g->alignment - p->pos % g->alignment) % g->alignment;
  g->data_off = p->pos + pad;
  return place_tensors(p);
}

/* Opens and validates path (see velo_gguf_api.open).  On success *out owns
 * the mapping and the index; free with velo_gguf_close().  On failure *out
 * is NULL, nothing is left allocated or mapped, and err says why. */
velo_status velo_gguf_open(const char *path, velo_gguf **out, velo_error *err) {
  gguf_parser p;
  velo_gguf *g;
  velo_status st;
  size_t n;

  if (out) *out = NULL;
  if (!path || !out)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "gguf: open needs a path and an out pointer");
  memset(&p, 0, sizeof p);
  p.err = err;
  shorten_path(p.path_msg, sizeof p.path_msg, path);

  g = calloc(1, sizeof *g);
  n = strlen(path);
  if (!g || !(g->path = malloc(n + 1))) {
    free(g);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "gguf: %s: out of memory", p.path_msg);
  }
  memcpy(g->path, path, n + 1);
  p.g = g;

  st = map_file(&p, path);
  if (st == VELO_OK) st = parse_file(&p);
  if (st != VELO_OK) {
    velo_gguf_close(g);
    return st;
  }
  *out = g;
  return VELO_OK;
}

/* Unmaps and frees g and everything it owns; NULL is a no-op.  Every pointer
 * obtained from g becomes invalid. */
void velo_gguf_close(velo_gguf *g) {
  int64_t i;
  if (!g) return;
  if (g->kvs)
    for (i = 0; i < g->n_kv; i++) free(g->kvs[i].str_offs);
  free(g->kvs);
  free(g->tensors);
  free(g->kv_index.slots);
  free(g->tensor_index.slots);
  if (g->base) munmap((void *)g->base, (size_t)g->size);
  free(g->path);
  free(g);
}

/* ------------------------------------------------------------------ */
/* Accessors (read-only; safe from any thread)                          */
/* ------------------------------------------------------------------ */

/* Version of the file (2 or 3); 0 for NULL. */
uint32_t velo_gguf_version(const velo_gguf *g) {
  return g ? g->version : 0;
}

/* general.alignment, or 32 when absent; 0 for NULL. */
size_t velo_gguf_alignment(const velo_gguf *g) {
  return g ? g->alignment : 0;
}

/* The path as opened, NUL-terminated, owned by g; NULL for NULL. */
const char *velo_gguf_path(const velo_gguf *g) {
  return g ? g->path : NULL;
}

/* Size of the file in bytes; 0 for NULL. */
uint64_t velo_gguf_file_size(const velo_gguf *g) {
  return g ? g->size : 0;
}

/* Number of metadata keys; 0 for NULL. */
int64_t velo_gguf_kv_count(const velo_gguf *g) {
  return g ? g->n_kv : 0;
}

/* Index of key (NUL-terminated, exact bytes), or -1 if absent or g is NULL. */
int64_t velo_gguf_find_key(const velo_gguf *g, const char *key) {
  if (!g || !key) return -1;
  return index_find(&g->kv_index, g->base, key, strlen(key));
}

/* Name of key i (into the mapping, not NUL-terminated) and its length in
 * *len (may be NULL); NULL when i is out of range. */
const char *velo_gguf_key_name(const velo_gguf *g, int64_t i, size_t *len) {
  if (!g || i < 0 || i >= g->n_kv) return NULL;
  if (len) *len = (size_t)g->kvs[i].key.len;
  return (const char *)g->base + g->kvs[i].key.off;
}

/* Value type of key i; (velo_gguf_type)-1 when i is out of range. */
velo_gguf_type velo_gguf_kv_type(const velo_gguf *g, int64_t i) {
  if (!g || i < 0 || i >= g->n_kv) return (velo_gguf_type)-1;
  return (velo_gguf_type)g->kvs[i].type;
}

/* For an ARRAY key i: sets *elem_type and *count (either may be NULL) and
 * returns true.  Otherwise returns false, sets *count to 0 and leaves
 * *elem_type alone. */
bool velo_gguf_kv_array_info(const velo_gguf *g, int64_t i, velo_gguf_type *elem_type,
                             uint64_t *count) {
  if (!g || i < 0 || i >= g->n_kv || g->kvs[i].type != VELO_GGUF_ARRAY) {
    if (count) *count = 0;
    return false;
  }
  if (elem_type) *elem_type = (velo_gguf_type)g->kvs[i].elem_type;
  if (count) *count = g->kvs[i].count;
  return true;
}

/* Finds key for a getter: sets *kv to its entry and returns OK, or returns
 * NOT_FOUND (INVALID_ARGUMENT for a NULL g or key) with err filled. */
static velo_status lookup(const velo_gguf *g, const char *key, const gguf_kv **kv,
                          velo_error *err) {
  int64_t i;
  char q[128];
  if (!g || !key)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "gguf: getter needs a file and a key");
  i = velo_gguf_find_key(g, key);
  if (i >= 0) {
    *kv = &g->kvs[i];
    return VELO_OK;
  }
  key_text(q, sizeof q, key);
  return velo_error_set(err, VELO_NOT_FOUND, "gguf: %s: key \"%s\" not found", g->path, q);
}

/* INVALID_ARGUMENT "key K has type T, wanted W" (T spelled ARRAY of E for arrays). */
static velo_status wrong_type(const velo_gguf *g, const gguf_kv *kv, const char *wanted,
                              velo_error *err) {
  char q[128];
  quote_bytes(q, sizeof q, g->base + kv->key.off, kv->key.len);
  if (kv->type == VELO_GGUF_ARRAY)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "gguf: %s: key \"%s\" has type ARRAY of %s, wanted %s", g->path, q,
                          type_name(kv->elem_type), wanted);
  return velo_error_set(err, VELO_INVALID_ARGUMENT, "gguf: %s: key \"%s\" has type %s, wanted %s",
                        g->path, q, type_name(kv->type), wanted);
}

/* Integer value of key (any integer type or BOOL) in *out.  NOT_FOUND,
 * INVALID_ARGUMENT for another type, OUT_OF_RANGE for a UINT64 above
 * INT64_MAX. */
velo_status velo_gguf_get_int(const velo_gguf *g, const char *key, int64_t *out, velo_error *err) {
  const gguf_kv *kv = NULL;
  const uint8_t *v;
  int64_t x;
  velo_status st = lookup(g, key, &kv, err);
  if (st != VELO_OK) return st;
  v = g->base + kv->val_off;
  switch (kv->type) {
    case VELO_GGUF_UINT8:
    case VELO_GGUF_BOOL:
      x = v[0];
      break;
    case VELO_GGUF_INT8:
      x = (int8_t)v[0];
      break;
    case VELO_GGUF_UINT16:
      x = (uint16_t)(v[0] | v[1] << 8);
      break;
    case VELO_GGUF_INT16:
      x = (int16_t)(uint16_t)(v[0] | v[1] << 8);
      break;
    case VELO_GGUF_UINT32:
      x = load_u32(v);
      break;
    case VELO_GGUF_INT32:
      x = (int32_t)load_u32(v);
      break;
    case VELO_GGUF_INT64:
      x = (int64_t)load_u64(v);
      break;
    case VELO_GGUF_UINT64: {
      uint64_t u = load_u64(v);
      if (u > (uint64_t)INT64_MAX) {
        char q[128];
        key_text(q, sizeof q, key);
        return velo_error_set(err, VELO_OUT_OF_RANGE,
                              "gguf: %s: key \"%s\" = %" PRIu64 " does not fit int64", g->path, q,
                              u);
      }
      x = (int64_t)u;
      break;
    }
    default:
      return wrong_type(g, kv, "an integer or BOOL", err);
  }
  if (out) *out = x;
  return VELO_OK;
}

/* Floating-point value of key (FLOAT32 or FLOAT64) in *out.  NOT_FOUND or
 * INVALID_ARGUMENT. */
velo_status velo_gguf_get_float(const velo_gguf *g, const char *key, double *out, velo_error *err) {
  const gguf_kv *kv = NULL;
  velo_status st = lookup(g, key, &kv, err);
  if (st != VELO_OK) return st;
  if (kv->type == VELO_GGUF_FLOAT32) {
    uint32_t u = load_u32(g->base + kv->val_off);
    float f;
    memcpy(&f, &u, sizeof f);
    if (out) *out = f;
  } else if (kv->type == VELO_GGUF_FLOAT64) {
    uint64_t u = load_u64(g->base + kv->val_off);
    double d;
    memcpy(&d, &u, sizeof d);
    if (out) *out = d;
  } else {
    return wrong_type(g, kv, "FLOAT32 or FLOAT64", err);
  }
  return VELO_OK;
}

/* BOOL value of key in *out.  NOT_FOUND or INVALID_ARGUMENT. */
velo_status velo_gguf_get_bool(const velo_gguf *g, const char *key, bool *out, velo_error *err) {
  const gguf_kv *kv = NULL;
  velo_status st = lookup(g, key, &kv, err);
  if (st != VELO_OK) return st;
  if (kv->type != VELO_GGUF_BOOL) return wrong_type(g, kv, "BOOL", err);
  if (out) *out = g->base[kv->val_off] != 0;
  return VELO_OK;
}

/* STRING value of key: *str points into the mapping (not NUL-terminated),
 * *len is its length.  NOT_FOUND or INVALID_ARGUMENT. */
velo_status velo_gguf_get_string(const velo_gguf *g, const char *key, const char **str, size_t *len,
                                 velo_error *err) {
  const gguf_kv *kv = NULL;
  velo_status st = lookup(g, key, &kv, err);
  if (st != VELO_OK) return st;
  if (kv->type != VELO_GGUF_STRING) return wrong_type(g, kv, "STRING", err);
  if (str) *str = (const char *)g->base + kv->val_off;
  if (len) *len = (size_t)kv->str_len;
  return VELO_OK;
}

/* Array of numbers or bools: element type, count and the packed
 * little-endian elements in the mapping (maybe unaligned).  NOT_FOUND, or
 * INVALID_ARGUMENT for a non-array or an array of strings or arrays. */
velo_status velo_gguf_get_array(const velo_gguf *g, const char *key, velo_gguf_type *elem_type,
                                uint64_t *count, const void **data, velo_error *err) {
  const gguf_kv *kv = NULL;
  velo_status st = lookup(g, key, &kv, err);
  if (st != VELO_OK) return st;
  if (kv->type != VELO_GGUF_ARRAY || kv->elem_type == VELO_GGUF_STRING ||
      kv->elem_type == VELO_GGUF_ARRAY)
    return wrong_type(g, kv, "an ARRAY of numbers or BOOL", err);
  if (elem_type) *elem_type = (velo_gguf_type)kv->elem_type;
  if (count) *count = kv->count;
  if (data) *data = g->base + kv->val_off;
  return VELO_OK;
}

/* Element idx of a string array (O(1)): *str into the mapping (not
 * NUL-terminated) and *len.  NOT_FOUND, or INVALID_ARGUMENT for another
 * type or idx >= count. */
velo_status velo_gguf_get_array_string(const velo_gguf *g, const char *key, uint64_t idx,
                                       const char **str, size_t *len, velo_error *err) {
  const gguf_kv *kv = NULL;
  uint64_t off;
  velo_status st = lookup(g, key, &kv, err);
  if (st != VELO_OK) return st;
  if (kv->type != VELO_GGUF_ARRAY || kv->elem_type != VELO_GGUF_STRING)
    return wrong_type(g, kv, "an ARRAY of STRING", err);
  if (idx >= kv->count) {
    char q[128];
    key_text(q, sizeof q, key);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "gguf: %s: index %" PRIu64 " out of range for key \"%s\" (%" PRIu64
                          " strings)",
                          g->path, idx, q, kv->count);
  }
  off = kv->str_offs[idx];
  if (str) *str = (const char *)g->base + off + 8;
  if (len) *len = (size_t)load_u64(g->base + off);
  return VELO_OK;
}

/* Number of tensors; 0 for NULL. */
int64_t velo_gguf_tensor_count(const velo_gguf *g) {
  return g ? g->n_tensors : 0;
}

/* Index of the tensor named name (NUL-terminated), or -1. */
int64_t velo_gguf_find_tensor(const velo_gguf *g, const char *name) {
  if (!g || !name) return -1;
  return index_find(&g->tensor_index, g->base, name, strlen(name));
}

/* Fills *out for tensor i.  The caller sets out->struct_size; only that
 * many bytes are written (an older, shorter struct gets its own fields).
 * INVALID_ARGUMENT if i is out of range or struct_size is too small. */
velo_status velo_gguf_get_tensor_info(const velo_gguf *g, int64_t i, velo_gguf_tensor_info *out,
                                      velo_error *err) {
  velo_gguf_tensor_info ti;
  const gguf_tensor *t;
  size_t n;
  int d;
  if (!g || !out || out->struct_size < sizeof(uint32_t))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "gguf: tensor_info needs a file and an out struct with struct_size set");
  if (i < 0 || i >= g->n_tensors)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "gguf: %s: tensor index %" PRId64 " out of range (%" PRId64 " tensors)",
                          g->path, i, g->n_tensors);
  t = &g->tensors[i];
  memset(&ti, 0, sizeof ti);
  ti.struct_size = out->struct_size;
  ti.name = (const char *)g->base + t->name.off;
  ti.name_len = (size_t)t->name.len;
  ti.dtype = (velo_dtype)t->dtype;
  ti.n_dims = t->n_dims;
  for (d = 0; d < VELO_MAX_DIMS; d++) ti.ne[d] = t->ne[d];
  ti.offset = t->abs_off;
  ti.size = (size_t)t->size;
  ti.data = g->base + t->abs_off;
  n = out->struct_size < sizeof ti ? out->struct_size : sizeof ti;
  memcpy(out, &ti, n);
  return VELO_OK;
}

/* The table handed to plugins through velo_host. */
const velo_gguf_api velo_gguf_reader = {
    .struct_size = sizeof(velo_gguf_api),
    .open = velo_gguf_open,
    .close = velo_gguf_close,
    .version = velo_gguf_version,
    .alignment = velo_gguf_alignment,
    .path = velo_gguf_path,
    .file_size = velo_gguf_file_size,
    .kv_count = velo_gguf_kv_count,
    .find_key = velo_gguf_find_key,
    .key_name = velo_gguf_key_name,
    .kv_type = velo_gguf_kv_type,
    .kv_array_info = velo_gguf_kv_array_info,
    .get_int = velo_gguf_get_int,
    .get_float = velo_gguf_get_float,
    .get_bool = velo_gguf_get_bool,
    .get_string = velo_gguf_get_string,
    .get_array = velo_gguf_get_array,
    .get_array_string = velo_gguf_get_array_string,
    .tensor_count = velo_gguf_tensor_count,
    .find_tensor = velo_gguf_find_tensor,
    .tensor_info = velo_gguf_get_tensor_info,
};
