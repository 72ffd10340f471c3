/*
 * oip_validate.c - the core's check of a ModelInferRequest (Open Inference
 * Protocol) and its conversion to what crosses the plugin ABI: named
 * velo_io_tensors with raw little-endian contents, and velo_params.
 *
 * Nothing a client sends reaches a task plugin before it has passed here:
 * datatypes, shapes, element counts and byte sizes, the BYTES length
 * prefixes, the choice between typed contents and raw_input_contents, the
 * input names against the model's declared inputs, and the parameters.
 * Every refusal is INVALID_ARGUMENT with a message that names the input or
 * parameter (rendered with velo_server_quote: client text is never copied
 * raw into a status) and says what was expected.
 *
 * Conversion: raw_input_contents entries are borrowed as they are (they
 * already have the ABI's layout, BYTES included); typed contents are
 * converted into new buffers (bool_contents -> one byte per BOOL,
 * int_contents -> INT8/16/32, uint_contents -> UINT8/16/32, int64, uint64,
 * fp32, fp64, bytes_contents -> 4-byte length + bytes per element).
 * Request parameters map one to one, except "stream" (consumed: it chooses
 * how responses are delivered), "triton_enable_empty_final_response"
 * (consumed) and "stop", whose value may be a JSON array of strings, each
 * of which becomes its own "stop" parameter.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oip.h"
#include "server.h"

/* Room for a quoted name inside a velo_error message (512 bytes). */
#define QUOTE_CAP 120

/* Renders client text s for a message (see velo_server_quote). */
static const char *quote(const char *s, char *buf) {
  return velo_server_quote(s, s ? strlen(s) : 0, buf, QUOTE_CAP);
}

/* ------------------------------------------------------------------ */
/* Datatypes and shapes                                                */
/* ------------------------------------------------------------------ */

velo_datatype velo_oip_datatype(const char *name) {
  if (!name) return VELO_DATATYPE_INVALID;
#define VELO_OIP_DT_(n, size) \
  if (strcmp(name, #n) == 0) return VELO_DATATYPE_##n;
  VELO_DATATYPE_MAP(VELO_OIP_DT_)
#undef VELO_OIP_DT_
  return VELO_DATATYPE_INVALID;
}

/* "BOOL, UINT8, ..., BF16": every protocol datatype, for messages. */
#define VELO_OIP_DT_LIST_(n, size) #n ", "
static const char datatype_list[] = VELO_DATATYPE_MAP(VELO_OIP_DT_LIST_);
#undef VELO_OIP_DT_LIST_

char *velo_oip_shape_str(const int64_t *dims, size_t n, char *buf, size_t size) {
  size_t used = 0;
  if (size == 0) return buf;
  buf[0] = '\0';
  if (n == 0) { /* a scalar */
    snprintf(buf, size, "[]");
    return buf;
  }
  for (size_t i = 0; i <= n; i++) {
    char piece[32];
    int w = i == n ? snprintf(piece, sizeof piece, "]")
                   : snprintf(piece, sizeof piece, "%s%lld", i ? ", " : "[", (long long)dims[i]);
    if (w < 0) break;
    if (used + (size_t)w + 1 > size) { /* does not fit: end with "..." */
      if (size >= 4) memcpy(buf + (used + 4 <= size ? used : size - 4), "...", 4);
      return buf;
    }
    memcpy(buf + used, piece, (size_t)w + 1);
    used += (size_t)w;
  }
  return buf;
}

/* The element count of a shape whose dimensions are all >= 0; false when
 * the product overflows int64.  Independent of the order of the
 * dimensions: a shape with a 0 anywhere has 0 elements, whatever its
 * other dimensions are; otherwise the product must fit. */
static bool element_count(const int64_t *dims, size_t n, int64_t *count) {
  int64_t c = 1;
  for (size_t i = 0; i < n; i++)
    if (dims[i] == 0) {
      *count = 0;
      return true;
    }
  for (size_t i = 0; i < n; i++) {
    if (c > INT64_MAX / dims[i]) return false;
    c *= dims[i];
  }
  *count = c;
  return true;
}

/* One name and where it was, for finding a repeated name by sorting. */
typedef struct named_index {
  const char *name;
  size_t index;
} named_index;

/* qsort order: by name, then by position. */
static int named_index_cmp(const void *a, const void *b) {
  const named_index *x = a, *y = b;
  int c = strcmp(x->name, y->name);
  if (c) return c;
  return x->index < y->index ? -1 : x->index > y->index;
}

int velo_oip_first_duplicate(const char *(*name_of)(const void *ctx, size_t i), const void *ctx,
                             size_t n, size_t *first, size_t *second) {
  named_index *v;
  bool found = false;
  if (n < 2) return 0;
  if (!(v = malloc(n * sizeof *v))) return -1;
  for (size_t i = 0; i < n; i++) {
    v[i].name = name_of(ctx, i);
    v[i].index = i;
  }
  qsort(v, n, sizeof *v, named_index_cmp);
  /* In each run of one name the first two entries are its first two
   * places; the pair whose second place comes earliest is the one a
   * front-to-back scan would meet first. */
  for (size_t k = 1; k < n; k++)
    if (strcmp(v[k - 1].name, v[k].name) == 0 && (k < 2 || strcmp(v[k - 2].name, v[k].name) != 0) &&
        (!found || v[k].index < *second)) {
      *first = v[k - 1].index;
      *second = v[k].index;
      found = true;
    }
  free(v);
  return found ? 1 : 0;
}

/* The declared input called name, or NULL. */
static const velo_io_desc *find_decl(const velo_io_desc *decl, size_t n_decl, const char *name) {
  for (size_t i = 0; i < n_decl; i++)
    if (decl[i].name && strcmp(decl[i].name, name) == 0) return &decl[i];
  return NULL;
}

/* "text_input (BYTES [1]), ..." : the declared inputs, for messages. */
static void decl_list(const velo_io_desc *decl, size_t n_decl, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n_decl && used < size; i++) {
    char shape[96];
    const char *dt = velo_datatype_name(decl[i].datatype);
    int w = snprintf(buf + used, size - used, "%s%s (%s %s)", i ? ", " : "",
                     decl[i].name ? decl[i].name : "?", dt ? dt : "?",
                     velo_oip_shape_str(decl[i].shape, (size_t)decl[i].n_dims, shape, sizeof shape));
    if (w < 0) break;
    used += (size_t)w;
  }
}

/* True when shape dims[0..n) fits the declared shape (-1: any size). */
static bool shape_matches(const velo_io_desc *d, const int64_t *dims, size_t n) {
  if ((size_t)d->n_dims != n) return false;
  for (size_t i = 0; i < n; i++)
    if (d->shape[i] != -1 && d->shape[i] != dims[i]) return false;
  return true;
}

/* ------------------------------------------------------------------ */
/* Typed contents                                                      */
/* ------------------------------------------------------------------ */

/* The InferTensorContents fields, in field-number order. */
typedef enum contents_field {
  F_BOOL = 0,
  F_INT,
  F_INT64,
  F_UINT,
  F_UINT64,
  F_FP32,
  F_FP64,
  F_BYTES,
  F_COUNT,
  F_NONE = F_COUNT /* the datatype has no typed form (FP16, BF16) */
} contents_field;

static const char *const field_names[F_COUNT] = {
    "bool_contents", "int_contents",  "int64_contents", "uint_contents",
    "uint64_contents", "fp32_contents", "fp64_contents",  "bytes_contents",
};

/* The field that carries datatype t in typed form. */
static contents_field field_for(velo_datatype t) {
  switch (t) {
    case VELO_DATATYPE_BOOL: return F_BOOL;
    case VELO_DATATYPE_INT8:
    case VELO_DATATYPE_INT16:
    case VELO_DATATYPE_INT32: return F_INT;
    case VELO_DATATYPE_INT64: return F_INT64;
    case VELO_DATATYPE_UINT8:
    case VELO_DATATYPE_UINT16:
    case VELO_DATATYPE_UINT32: return F_UINT;
    case VELO_DATATYPE_UINT64: return F_UINT64;
    case VELO_DATATYPE_FP32: return F_FP32;
    case VELO_DATATYPE_FP64: return F_FP64;
    case VELO_DATATYPE_BYTES: return F_BYTES;
    default: return F_NONE;
  }
}

/* Entries in field f of c. */
static size_t field_count(const Inference__InferTensorContents *c, contents_field f) {
  switch (f) {
    case F_BOOL: return c->n_bool_contents;
    case F_INT: return c->n_int_contents;
    case F_INT64: return c->n_int64_contents;
    case F_UINT: return c->n_uint_contents;
    case F_UINT64: return c->n_uint64_contents;
    case F_FP32: return c->n_fp32_contents;
    case F_FP64: return c->n_fp64_contents;
    case F_BYTES: return c->n_bytes_contents;
    default: return 0;
  }
}

/* Stores the low n bytes of v at p, little-endian. */
static void put_le(uint8_t *p, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Converts the typed contents of one input (count elements, already
 * checked to be in field f) into a new buffer *data of *size bytes.
 * INVALID_ARGUMENT for a value outside a narrow integer type. */
static velo_status convert_typed(const Inference__InferTensorContents *c, velo_datatype t,
                                 contents_field f, size_t count, const char *qname,
                                 void **data, size_t *size, velo_error *err) {
  size_t es = velo_datatype_size(t), total = 0;
  uint8_t *out;

  if (f == F_BYTES) {
    for (size_t i = 0; i < count; i++) {
      if (c->bytes_contents[i].len > UINT32_MAX)
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "input '%s': contents.bytes_contents[%zu] has %zu bytes; a BYTES "
                              "element may have at most 4294967295", qname, i,
                              c->bytes_contents[i].len);
      total += 4 + c->bytes_contents[i].len; /* bounded by the message size */
    }
  } else {
    total = count * es; /* count x es was checked against overflow */
  }
  out = malloc(total ? total : 1);
  if (!out) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");

  for (size_t i = 0, off = 0; i < count; i++) {
    int64_t lo = 0, hi = 0, v;
    uint64_t u;
    uint32_t bits32;
    float fv;
    double dv;
    switch (f) {
      case F_BOOL:
        out[i] = c->bool_contents[i] ? 1 : 0;
        break;
      case F_INT:
        v = c->int_contents[i];
        lo = t == VELO_DATATYPE_INT8 ? INT8_MIN : t == VELO_DATATYPE_INT16 ? INT16_MIN : INT32_MIN;
        hi = t == VELO_DATATYPE_INT8 ? INT8_MAX : t == VELO_DATATYPE_INT16 ? INT16_MAX : INT32_MAX;
        if (v < lo || v > hi) {
          free(out);
          return velo_error_set(err, VELO_INVALID_ARGUMENT,
                                "input '%s': contents.int_contents[%zu] = %lld does not fit %s "
                                "(%lld..%lld)", qname, i, (long long)v, velo_datatype_name(t),
                                (long long)lo, (long long)hi);
        }
        put_le(out + i * es, (uint64_t)v, es);
        break;
      case F_UINT:
        u = c->uint_contents[i];
        hi = t == VELO_DATATYPE_UINT8 ? UINT8_MAX : t == VELO_DATATYPE_UINT16 ? UINT16_MAX : UINT32_MAX;
        if (u > (uint64_t)hi) {
          free(out);
          return velo_error_set(err, VELO_INVALID_ARGUMENT,
                                "input '%s': contents.uint_contents[%zu] = %llu does not fit %s "
                                "(0..%lld)", qname, i, (unsigned long long)u,
                                velo_datatype_name(t), (long long)hi);
        }
        put_le(out + i * es, u, es);
        break;
      case F_INT64:
        put_le(out + i * 8, (uint64_t)c->int64_contents[i], 8);
        break;
      case F_UINT64:
        put_le(out + i * 8, c->uint64_contents[i], 8);
        break;
      case F_FP32:
        fv = c->fp32_contents[i];
        memcpy(&bits32, &fv, 4);
        put_le(out + i * 4, bits32, 4);
        break;
      case F_FP64:
        dv = c->fp64_contents[i];
        memcpy(&u, &dv, 8);
        put_le(out + i * 8, u, 8);
        break;
      case F_BYTES:
        put_le(out + off, c->bytes_contents[i].len, 4);
        if (c->bytes_contents[i].len) memcpy(out + off + 4, c->bytes_contents[i].data, c->bytes_contents[i].len);
        off += 4 + c->bytes_contents[i].len;
        break;
      default:
        break;
    }
  }
  *data = out;
  *size = total;
  return VELO_OK;
}

/* Checks that a raw BYTES buffer holds exactly count elements, each a
 * 4-byte little-endian length followed by that many bytes. */
static velo_status check_raw_bytes(const uint8_t *p, size_t size, int64_t count,
                                   const char *qname, const char *shape, velo_error *err) {
  size_t off = 0;
  int64_t k = 0;
  while (off < size) {
    uint32_t len;
    if (k == count)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': raw_input_contents has %zu byte(s) left after the %lld "
                            "BYTES element(s) of shape %s (each element: a 4-byte little-endian "
                            "length, then that many bytes)", qname, size - off, (long long)count,
                            shape);
    if (size - off < 4)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': BYTES element %lld at byte %zu of raw_input_contents: its "
                            "4-byte little-endian length prefix is cut short (%zu byte(s) left)",
                            qname, (long long)k, off, size - off);
    len = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
          (uint32_t)p[off + 3] << 24;
    if ((size_t)len > size - off - 4)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': BYTES element %lld at byte %zu of raw_input_contents has "
                            "length prefix %u, but only %zu byte(s) follow it", qname,
                            (long long)k, off, len, size - off - 4);
    off += 4 + (size_t)len;
    k++;
  }
  if (k != count)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': raw_input_contents holds %lld BYTES element(s), but shape %s "
                          "needs %lld (each element: a 4-byte little-endian length, then that "
                          "many bytes)", qname, (long long)k, shape, (long long)count);
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Inputs                                                              */
/* ------------------------------------------------------------------ */

/* Checks name, datatype and shape of input i and fills t (shape pointing
 * into dims); *count gets its element count.  dup (NULL: none) is the
 * first repeated input name, found beforehand: dup[1] repeats dup[0]. */
static velo_status check_header(const Inference__ModelInferRequest *msg, size_t i,
                                const char *model, const velo_io_desc *decl, size_t n_decl,
                                int64_t *dims, velo_io_tensor *t, int64_t *count,
                                const size_t dup[2], velo_error *err) {
  const Inference__ModelInferRequest__InferInputTensor *in = msg->inputs[i];
  char qn[QUOTE_CAP], qm[QUOTE_CAP], qd[QUOTE_CAP], shape[160], want[160], list[320];
  velo_datatype dt;
  size_t es;

  if (!in->name[0])
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "inputs[%zu]: name must be set (the name of one of the model's inputs)", i);
  quote(in->name, qn);
  if (dup && dup[1] == i)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s' is given twice (inputs[%zu] and inputs[%zu]); each input "
                          "may appear once", qn, dup[0], i);
  dt = velo_oip_datatype(in->datatype);
  if (dt == VELO_DATATYPE_INVALID)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': unknown datatype '%s'; expected one of %.*s", qn,
                          quote(in->datatype, qd), (int)(sizeof datatype_list - 3), datatype_list);
  if (in->n_shape > VELO_OIP_MAX_DIMS)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': shape has %zu dimensions; at most %d are allowed", qn,
                          in->n_shape, VELO_OIP_MAX_DIMS);
  velo_oip_shape_str(in->shape, in->n_shape, shape, sizeof shape);
  for (size_t d = 0; d < in->n_shape; d++)
    if (in->shape[d] < 0)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': shape %s has a negative dimension (%lld at index %zu); "
                            "dimensions must be >= 0", qn, shape, (long long)in->shape[d], d);
  if (!element_count(in->shape, in->n_shape, count))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': shape %s has too many elements (the product of its "
                          "dimensions overflows a 64-bit integer)", qn, shape);
  es = velo_datatype_size(dt);
  if (es && (uint64_t)*count > SIZE_MAX / es)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': shape %s of %s is too large (%lld elements x %zu bytes "
                          "overflows the address space)", qn, shape, in->datatype,
                          (long long)*count, es);
  if (n_decl > 0) {
    const velo_io_desc *d = find_decl(decl, n_decl, in->name);
    if (!d) {
      decl_list(decl, n_decl, list, sizeof list);
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s' is not an input of model '%s'; its inputs: %s", qn,
                            quote(model, qm), list);
    }
    if (d->datatype != dt)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s' of model '%s' is %s, got %s", qn, quote(model, qm),
                            velo_datatype_name(d->datatype) ? velo_datatype_name(d->datatype) : "?",
                            in->datatype);
    if (!shape_matches(d, in->shape, in->n_shape))
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s' of model '%s' must have shape %s (-1: any size), got %s",
                            qn, quote(model, qm),
                            velo_oip_shape_str(d->shape, (size_t)d->n_dims, want, sizeof want),
                            shape);
  }
  if (in->n_shape) memcpy(dims, in->shape, in->n_shape * sizeof *dims); /* shape may be NULL */
  t->struct_size = (uint32_t)sizeof *t;
  t->name = in->name;
  t->datatype = dt;
  t->n_dims = (int32_t)in->n_shape;
  t->shape = dims;
  return VELO_OK;
}

/* Fills the data of input i (header already checked): from
 * raw_input_contents[i] when raw, else from its typed contents. */
static velo_status convert_data(const Inference__ModelInferRequest *msg, size_t i, bool raw,
                                int64_t count, velo_io_tensor *t, void **owned,
                                velo_error *err) {
  const Inference__ModelInferRequest__InferInputTensor *in = msg->inputs[i];
  const Inference__InferTensorContents *c = in->contents;
  char qn[QUOTE_CAP], shape[160];
  size_t es = velo_datatype_size(t->datatype);
  contents_field want = field_for(t->datatype);

  quote(in->name, qn);
  velo_oip_shape_str(in->shape, in->n_shape, shape, sizeof shape);
  if (raw) {
    const ProtobufCBinaryData *b = &msg->raw_input_contents[i];
    if (t->datatype == VELO_DATATYPE_BYTES) {
      velo_status st = check_raw_bytes(b->data, b->len, count, qn, shape, err);
      if (st != VELO_OK) return st;
    } else if (b->len != (size_t)count * es) {
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': raw_input_contents[%zu] has %zu bytes, but shape %s of "
                            "%s needs %llu (%lld element(s) x %zu bytes)", qn, i, b->len, shape,
                            in->datatype, (unsigned long long)count * es, (long long)count, es);
    }
    t->data = b->data;
    t->size = b->len;
    return VELO_OK;
  }

  if (!c) {
    if (count == 0) { /* an empty tensor needs no data */
      t->data = NULL;
      t->size = 0;
      return VELO_OK;
    }
    if (want == F_NONE)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': no data: put its %lld element(s) in raw_input_contents "
                            "(%s has no typed contents field)", qn, (long long)count, in->datatype);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': no data: put its %lld element(s) in contents.%s or in "
                          "raw_input_contents", qn, (long long)count, field_names[want]);
  }
  for (int f = 0; f < F_COUNT; f++) {
    size_t n = field_count(c, (contents_field)f);
    if (f == (int)want || n == 0) continue;
    if (want == F_NONE)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': %s has no typed contents field, but contents.%s has %zu "
                            "entries: send %s tensors in raw_input_contents", qn, in->datatype,
                            field_names[f], n, in->datatype);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s' is %s, so its elements go in contents.%s, but contents.%s "
                          "has %zu entries", qn, in->datatype, field_names[want], field_names[f], n);
  }
  if (want == F_NONE) {
    if (count == 0) {
      t->data = NULL;
      t->size = 0;
      return VELO_OK;
    }
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': %s has no typed contents field: send its %lld element(s) "
                          "in raw_input_contents", qn, in->datatype, (long long)count);
  }
  if (field_count(c, want) != (uint64_t)count)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': contents.%s has %zu element(s), but shape %s needs %lld",
                          qn, field_names[want], field_count(c, want), shape, (long long)count);
  {
    void *data = NULL;
    size_t size = 0;
    velo_status st = convert_typed(c, t->datatype, want, (size_t)count, qn, &data, &size, err);
    if (st != VELO_OK) return st;
    *owned = data;
    t->data = data;
    t->size = size;
  }
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Parameters                                                          */
/* ------------------------------------------------------------------ */

/* Appends a parameter to r (growing its array).  NULL when out of memory. */
static velo_param *push_param(velo_oip_request *r, size_t *cap, const char *key,
                              velo_param_type type) {
  velo_param *p;
  if (r->n_params == *cap) {
    size_t nc = *cap ? 2 * *cap : 8;
    velo_param *np = realloc(r->params, nc * sizeof *np);
    if (!np) return NULL;
    r->params = np;
    *cap = nc;
  }
  p = &r->params[r->n_params++];
  memset(p, 0, sizeof *p);
  p->struct_size = (uint32_t)sizeof *p;
  p->key = key;
  p->type = type;
  return p;
}

/* Keeps s (malloc'd) in r->strings so that it is freed with r. */
static bool keep_string(velo_oip_request *r, char *s) {
  char **ns = realloc(r->strings, (r->n_strings + 1) * sizeof *ns);
  if (!ns) return false;
  r->strings = ns;
  r->strings[r->n_strings++] = s;
  return true;
}

/* JSON white space. */
static size_t skip_ws(const char *s, size_t i, size_t len) {
  while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  return i;
}

/* Four hex digits at s[i..i+4) into *v; false if not. */
static bool hex4(const char *s, size_t i, size_t len, unsigned *v) {
  unsigned x = 0;
  if (i > len || len - i < 4) return false;
  for (size_t k = 0; k < 4; k++) {
    char c = s[i + k];
    x <<= 4;
    if (c >= '0' && c <= '9') x |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') x |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') x |= (unsigned)(c - 'A' + 10);
    else return false;
  }
  *v = x;
  return true;
}

/* Writes code point cp as UTF-8 at out; returns the bytes written. */
static size_t put_utf8(char *out, unsigned cp) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | cp >> 6);
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | cp >> 18);
  out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses the JSON string starting at s[*i] (the opening quote) into a new
 * NUL-terminated string *out (malloc'd, no larger than the string's own
 * text in s).  On a syntax error returns false with *why set and *i at the
 * offending byte; *out is NULL then. */
static bool json_string(const char *s, size_t len, size_t *i, char **out, const char **why) {
  size_t p = *i + 1, n = 0, end = *i + 1;
  char *buf;
  /* The decoded text is never longer than the encoded text up to the
   * closing quote (or the end of the value, when it is missing). */
  while (end < len && s[end] != '"') end += s[end] == '\\' ? 2 : 1;
  if (end > len) end = len;
  buf = malloc(end - *i);
  *out = NULL;
  if (!buf) {
    *why = "out of memory";
    return false;
  }
  for (;;) {
    unsigned char c;
    if (p >= len) {
      *why = "a string is not closed";
      goto fail;
    }
    c = (unsigned char)s[p];
    if (c == '"') break;
    if (c < 0x20) {
      *why = "a control character must be escaped";
      goto fail;
    }
    if (c != '\\') {
      buf[n++] = (char)c;
      p++;
      continue;
    }
    if (++p >= len) {
      *why = "an escape is cut short";
      goto fail;
    }
    switch (s[p]) {
      case '"': buf[n++] = '"'; p++; break;
      case '\\': buf[n++] = '\\'; p++; break;
      case '/': buf[n++] = '/'; p++; break;
      case 'b': buf[n++] = '\b'; p++; break;
      case 'f': buf[n++] = '\f'; p++; break;
      case 'n': buf[n++] = '\n'; p++; break;
      case 'r': buf[n++] = '\r'; p++; break;
      case 't': buf[n++] = '\t'; p++; break;
      case 'u': {
        unsigned cp, lo;
        if (!hex4(s, p + 1, len, &cp)) {
          *why = "\\u needs four hex digits";
          goto fail;
        }
        p += 5;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a high surrogate: its pair must follow */
          if (p + 1 < len && s[p] == '\\' && s[p + 1] == 'u' && hex4(s, p + 2, len, &lo) &&
              lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
          } else {
            *why = "a \\u surrogate is not paired";
            goto fail;
          }
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          *why = "a \\u surrogate is not paired";
          goto fail;
        }
        if (cp == 0) {
          *why = "\\u0000 (NUL) is not allowed in a stop string";
          goto fail;
        }
        n += put_utf8(buf + n, cp);
        break;
      }
      default:
        *why = "unknown escape";
        goto fail;
    }
  }
  buf[n] = '\0';
  *i = p + 1;
  *out = buf;
  return true;
fail:
  *i = p;
  free(buf);
  return false;
}

/* Adds one "stop" parameter per string of the JSON array s[0..len); the
 * strings are kept in r.  INVALID_ARGUMENT naming the byte of a syntax
 * error, or for more than VELO_OIP_MAX_STOP strings or one longer than
 * VELO_OIP_MAX_STOP_BYTES (checked as it parses: no more than that is
 * ever kept). */
static velo_status add_stop_array(velo_oip_request *r, size_t *cap, const char *key,
                                  const char *s, size_t len, velo_error *err) {
  size_t i = skip_ws(s, 0, len) + 1; /* past '[' */
  size_t n_stop = 0;
  const char *why = NULL;

  i = skip_ws(s, i, len);
  if (i < len && s[i] == ']') {
    i = skip_ws(s, i + 1, len);
    if (i == len) return VELO_OK; /* [] : no stop strings */
    why = "text follows the array";
    goto bad;
  }
  for (;;) {
    char *str = NULL;
    velo_param *p;
    if (i >= len || s[i] != '"') {
      why = "expected a string";
      goto bad;
    }
    if (n_stop == VELO_OIP_MAX_STOP)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "parameter stop: at most %d stop strings are allowed, got more",
                            VELO_OIP_MAX_STOP);
    if (!json_string(s, len, &i, &str, &why)) goto bad;
    if (strlen(str) > VELO_OIP_MAX_STOP_BYTES) {
      size_t n = strlen(str);
      free(str);
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "parameter stop: stop string %zu has %zu bytes; at most %d are "
                            "allowed", n_stop, n, VELO_OIP_MAX_STOP_BYTES);
    }
    n_stop++;
    if (!keep_string(r, str)) {
      free(str);
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    }
    p = push_param(r, cap, key, VELO_PARAM_STRING);
    if (!p) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    p->value.s.ptr = str;
    p->value.s.len = strlen(str);
    i = skip_ws(s, i, len);
    if (i < len && s[i] == ',') {
      i = skip_ws(s, i + 1, len);
      continue;
    }
    if (i < len && s[i] == ']') {
      i = skip_ws(s, i + 1, len);
      if (i == len) return VELO_OK;
      why = "text follows the array";
      goto bad;
    }
    why = "expected ',' or ']'";
    goto bad;
  }
bad:
  return velo_error_set(err, VELO_INVALID_ARGUMENT,
                        "parameter stop starts with '[', so it must be a JSON array of strings, "
                        "e.g. [\"\\n\", \"END\"], but at byte %zu: %s (to stop at one string "
                        "that starts with '[', send it as a one-element array)", i, why);
}

/* Name of the value a parameter carries, for messages. */
static const char *param_kind(const Inference__InferParameter *v) {
  switch (v ? v->parameter_choice_case : INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE__NOT_SET) {
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM: return "bool_param";
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM: return "int64_param";
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM: return "string_param";
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM: return "double_param";
    case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM: return "uint64_param";
    default: return "no value";
  }
}

/* Converts the request parameters into r->params. */
static velo_status convert_params(const Inference__ModelInferRequest *msg, velo_oip_request *r,
                                  velo_error *err) {
  size_t cap = 0;
  char qk[QUOTE_CAP];

  for (size_t i = 0; i < msg->n_parameters; i++) {
    const char *key = msg->parameters[i]->key;
    const Inference__InferParameter *v = msg->parameters[i]->value;
    velo_param *p = NULL;

    if (!key[0])
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "parameters: a parameter key must not be empty");
    quote(key, qk);
    if (!v || v->parameter_choice_case == INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE__NOT_SET)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "parameter '%s' has no value: set one of bool_param, int64_param, "
                            "string_param, double_param, uint64_param", qk);
    if (strcmp(key, "stream") == 0 || strcmp(key, "triton_enable_empty_final_response") == 0) {
      if (v->parameter_choice_case != INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM)
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "parameter %s must be a bool (bool_param), got %s", key,
                              param_kind(v));
      if (key[1] == 't') { /* "stream" */
        r->stream_set = true;
        r->stream = v->bool_param != 0;
      } /* the final response is always sent: nothing to do for the other */
      continue;
    }
    switch (v->parameter_choice_case) {
      case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM:
        if ((p = push_param(r, &cap, key, VELO_PARAM_BOOL))) p->value.b = v->bool_param != 0;
        break;
      case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM:
        if ((p = push_param(r, &cap, key, VELO_PARAM_INT64))) p->value.i = v->int64_param;
        break;
      case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM:
        if ((p = push_param(r, &cap, key, VELO_PARAM_DOUBLE))) p->value.d = v->double_param;
        break;
      case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM:
        if (v->uint64_param > (uint64_t)INT64_MAX && strcmp(key, "seed") != 0)
          return velo_error_set(err, VELO_INVALID_ARGUMENT,
                                "parameter '%s' = %llu is too large: at most %lld (send it as "
                                "int64_param)", qk, (unsigned long long)v->uint64_param,
                                (long long)INT64_MAX);
        if ((p = push_param(r, &cap, key, VELO_PARAM_INT64)))
          p->value.i = (int64_t)v->uint64_param; /* seed: the same 64 bits */
        break;
      case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM: {
        const char *s = v->string_param;
        size_t len = strlen(s);
        if (strcmp(key, "stop") == 0 && s[skip_ws(s, 0, len)] == '[') {
          velo_status st = add_stop_array(r, &cap, key, s, len, err);
          if (st != VELO_OK) return st;
          continue;
        }
        if ((p = push_param(r, &cap, key, VELO_PARAM_STRING))) {
          p->value.s.ptr = s;
          p->value.s.len = len;
        }
        break;
      }
      default:
        break;
    }
    if (!p) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* The whole request                                                   */
/* ------------------------------------------------------------------ */

/* The name of input i of request ctx (for velo_oip_first_duplicate). */
static const char *input_name(const void *ctx, size_t i) {
  return ((const Inference__ModelInferRequest *)ctx)->inputs[i]->name;
}

velo_status velo_oip_request_convert(const Inference__ModelInferRequest *msg, const char *model,
                                     const velo_io_desc *decl, size_t n_decl,
                                     velo_oip_request *out, velo_error *err) {
  size_t n = msg->n_inputs, total_dims = 0;
  bool raw = msg->n_raw_input_contents > 0;
  char qm[QUOTE_CAP], list[320];
  velo_status st;
  int64_t *counts;
  size_t dup[2] = {0, 0};
  int dup_found;

  memset(out, 0, sizeof *out);
  if (!model) model = "";
  if (n == 0) {
    if (n_decl) decl_list(decl, n_decl, list, sizeof list);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "no inputs: a ModelInferRequest needs at least one input tensor%s%s%s%s",
                          n_decl ? "; model '" : "", n_decl ? quote(model, qm) : "",
                          n_decl ? "' takes: " : "", n_decl ? list : "");
  }
  if (raw && msg->n_raw_input_contents != n)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "raw_input_contents has %zu entries but there are %zu inputs: give one "
                          "entry per input, in the order of inputs (or use contents instead)",
                          msg->n_raw_input_contents, n);
  if (raw)
    for (size_t i = 0; i < n; i++)
      if (msg->inputs[i]->contents) {
        char qn[QUOTE_CAP];
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "input '%s': both contents and raw_input_contents are given; "
                              "use one or the other for all inputs of a request",
                              quote(msg->inputs[i]->name, qn));
      }
  if (n > VELO_OIP_MAX_TENSORS)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "too many inputs: %zu; a request may have at most %d", n,
                          VELO_OIP_MAX_TENSORS);
  dup_found = velo_oip_first_duplicate(input_name, msg, n, &dup[0], &dup[1]);
  if (dup_found < 0) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  for (size_t i = 0; i < n; i++) total_dims += msg->inputs[i]->n_shape;

  out->n_inputs = n;
  out->inputs = calloc(n, sizeof *out->inputs);
  out->owned = calloc(n, sizeof *out->owned);
  out->dims = calloc(total_dims ? total_dims : 1, sizeof *out->dims);
  counts = calloc(n, sizeof *counts);
  if (!out->inputs || !out->owned || !out->dims || !counts) {
    free(counts);
    out->n_inputs = out->inputs ? n : 0;
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }

  /* Names, datatypes, shapes (against the declaration) first: a misnamed
   * input is reported as such, not as a size problem. */
  total_dims = 0;
  for (size_t i = 0; i < n; i++) {
    st = check_header(msg, i, model, decl, n_decl, out->dims + total_dims, &out->inputs[i],
                      &counts[i], dup_found ? dup : NULL, err);
    if (st != VELO_OK) goto fail;
    total_dims += msg->inputs[i]->n_shape;
  }
  for (size_t d = 0; d < n_decl; d++) {
    bool given = false;
    if (decl[d].optional || !decl[d].name) continue;
    for (size_t i = 0; i < n && !given; i++) given = strcmp(msg->inputs[i]->name, decl[d].name) == 0;
    if (!given) {
      char shape[96];
      const char *dt = velo_datatype_name(decl[d].datatype);
      st = velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s' (%s %s) is missing; model '%s' requires it", decl[d].name,
                          dt ? dt : "?",
                          velo_oip_shape_str(decl[d].shape, (size_t)decl[d].n_dims, shape,
                                             sizeof shape),
                          quote(model, qm));
      goto fail;
    }
  }
  for (size_t i = 0; i < n; i++) {
    st = convert_data(msg, i, raw, counts[i], &out->inputs[i], &out->owned[i], err);
    if (st != VELO_OK) goto fail;
  }
  st = convert_params(msg, out, err);
  if (st != VELO_OK) goto fail;
  free(counts);
  return VELO_OK;

fail:
  free(counts);
  return st;
}

void velo_oip_request_free(velo_oip_request *r) {
  if (!r) return;
  for (size_t i = 0; r->owned && i < r->n_inputs; i++) free(r->owned[i]);
  for (size_t i = 0; i < r->n_strings; i++) free(r->strings[i]);
  free(r->owned);
  free(r->inputs);
  free(r->dims);
  free(r->params);
  free(r->strings);
  memset(r, 0, sizeof *r);
}
