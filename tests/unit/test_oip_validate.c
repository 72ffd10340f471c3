/*
 * test_oip_validate.c - the core's validation and conversion of Open
 * Inference Protocol requests (core/server/oip_validate.c), driven with
 * ModelInferRequest structs built here directly (no server, no plugin).
 *
 * Every refusal case of docs/protocol.md ("Input validation") is checked
 * for its status and for a message that names the input or parameter and
 * what was expected; the accepted forms are checked byte for byte after
 * conversion (typed contents to raw little-endian, BYTES length prefixes,
 * parameters, "stop" arrays, the consumed "stream" parameter).
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "oip.h"

#define MAX_IN 4
#define MAX_PARAMS 8

/* A ModelInferRequest and the storage its pointers point into. */
typedef struct req_builder {
  Inference__ModelInferRequest req;
  Inference__ModelInferRequest__InferInputTensor in[MAX_IN], *inp[MAX_IN];
  Inference__InferTensorContents contents[MAX_IN];
  int64_t shapes[MAX_IN][20];
  ProtobufCBinaryData raw[MAX_IN];
  Inference__ModelInferRequest__ParametersEntry pe[MAX_PARAMS], *pep[MAX_PARAMS];
  Inference__InferParameter pv[MAX_PARAMS];
} req_builder;

static void rb_init(req_builder *b) {
  memset(b, 0, sizeof *b);
  inference__model_infer_request__init(&b->req);
  b->req.model_name = (char *)"m";
  b->req.inputs = b->inp;
  b->req.raw_input_contents = b->raw;
  b->req.parameters = b->pep;
}

/* Adds an input with n dims (given after n); returns its index. */
static size_t rb_input(req_builder *b, const char *name, const char *datatype, size_t n, ...) {
  size_t i = b->req.n_inputs++;
  va_list ap;
  inference__model_infer_request__infer_input_tensor__init(&b->in[i]);
  b->in[i].name = (char *)name;
  b->in[i].datatype = (char *)datatype;
  va_start(ap, n);
  for (size_t d = 0; d < n; d++) b->shapes[i][d] = va_arg(ap, int64_t);
  va_end(ap);
  b->in[i].n_shape = n;
  b->in[i].shape = b->shapes[i];
  b->inp[i] = &b->in[i];
  return i;
}

/* Sets raw_input_contents[i] (appending up to i). */
static void rb_raw(req_builder *b, size_t i, const void *data, size_t len) {
  b->raw[i].data = (uint8_t *)data;
  b->raw[i].len = len;
  if (b->req.n_raw_input_contents < i + 1) b->req.n_raw_input_contents = i + 1;
}

/* The typed contents of input i (created empty). */
static Inference__InferTensorContents *rb_contents(req_builder *b, size_t i) {
  inference__infer_tensor_contents__init(&b->contents[i]);
  b->in[i].contents = &b->contents[i];
  return &b->contents[i];
}

/* Adds a request parameter; returns its value to fill in. */
static Inference__InferParameter *rb_param(req_builder *b, const char *key) {
  size_t i = b->req.n_parameters++;
  inference__model_infer_request__parameters_entry__init(&b->pe[i]);
  inference__infer_parameter__init(&b->pv[i]);
  b->pe[i].key = (char *)key;
  b->pe[i].value = &b->pv[i];
  b->pep[i] = &b->pe[i];
  return &b->pv[i];
}

static void rb_string(req_builder *b, const char *key, const char *v) {
  Inference__InferParameter *p = rb_param(b, key);
  p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
  p->string_param = (char *)v;
}

/* Converts b against decl; returns the status and leaves the message in
 * err and the result in r (the caller frees r). */
static velo_status run(req_builder *b, const velo_io_desc *decl, size_t n_decl,
                       velo_oip_request *r, velo_error *err) {
  velo_error_init(err);
  return velo_oip_request_convert(&b->req, "m", decl, n_decl, r, err);
}

/* Expects INVALID_ARGUMENT with every string of the NULL-ended list in the
 * message. */
static void expect_refused(const char *what, req_builder *b, const velo_io_desc *decl,
                           size_t n_decl, ...) {
  velo_oip_request r;
  velo_error err;
  va_list ap;
  const char *s;
  velo_status st = run(b, decl, n_decl, &r, &err);
  CHECK(st == VELO_INVALID_ARGUMENT, "%s: status %s (%s)", what, velo_status_name(st),
        err.message);
  va_start(ap, n_decl);
  while ((s = va_arg(ap, const char *)))
    CHECK(strstr(err.message, s) != NULL, "%s: message lacks \"%s\": %s", what, s, err.message);
  va_end(ap);
  velo_oip_request_free(&r);
}

/* Expects OK; the caller checks r and frees it. */
static bool expect_ok(const char *what, req_builder *b, const velo_io_desc *decl, size_t n_decl,
                      velo_oip_request *r) {
  velo_error err;
  velo_status st = run(b, decl, n_decl, r, &err);
  CHECK(st == VELO_OK, "%s: status %s: %s", what, velo_status_name(st), err.message);
  return st == VELO_OK;
}

/* A BYTES buffer of the given elements (4-byte LE length + bytes each). */
static size_t bytes_of(uint8_t *out, size_t n, const char *const *elems) {
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t len = (uint32_t)strlen(elems[i]);
    out[off] = (uint8_t)len;
    out[off + 1] = (uint8_t)(len >> 8);
    out[off + 2] = (uint8_t)(len >> 16);
    out[off + 3] = (uint8_t)(len >> 24);
    memcpy(out + off + 4, elems[i], len);
    off += 4 + len;
  }
  return off;
}

/* ------------------------------------------------------------------ */

static void test_structure(void) {
  req_builder b;
  uint8_t buf[64] = {0};

  rb_init(&b);
  expect_refused("no inputs", &b, NULL, 0, "no inputs", "at least one input", NULL);

  rb_init(&b);
  rb_input(&b, "", "FP32", 1, (int64_t)1);
  rb_raw(&b, 0, buf, 4);
  expect_refused("empty name", &b, NULL, 0, "inputs[0]", "name must be set", NULL);

  rb_init(&b);
  rb_input(&b, "x", "FP8", 1, (int64_t)1);
  rb_raw(&b, 0, buf, 1);
  expect_refused("unknown datatype", &b, NULL, 0, "'x'", "unknown datatype 'FP8'", "BOOL",
                 "BF16", NULL);

  rb_init(&b);
  rb_input(&b, "x", "fp32", 1, (int64_t)1); /* datatypes are upper case */
  rb_raw(&b, 0, buf, 4);
  expect_refused("lower-case datatype", &b, NULL, 0, "unknown datatype 'fp32'", NULL);

  rb_init(&b);
  rb_input(&b, "x", "FP32", 2, (int64_t)2, (int64_t)-1);
  rb_raw(&b, 0, buf, 8);
  expect_refused("negative dimension", &b, NULL, 0, "'x'", "[2, -1]", "negative dimension",
                 "-1 at index 1", ">= 0", NULL);

  rb_init(&b);
  {
    size_t i = rb_input(&b, "x", "FP32", 0);
    b.in[i].n_shape = 17;
    for (int d = 0; d < 17; d++) b.shapes[i][d] = 1;
  }
  rb_raw(&b, 0, buf, 4);
  expect_refused("17 dimensions", &b, NULL, 0, "'x'", "17 dimensions", "at most 16", NULL);

  rb_init(&b);
  rb_input(&b, "x", "FP32", 2, (int64_t)INT64_MAX, (int64_t)2);
  rb_raw(&b, 0, buf, 4);
  expect_refused("element count overflow", &b, NULL, 0, "'x'", "too many elements",
                 "overflows a 64-bit integer", NULL);

  rb_init(&b);
  rb_input(&b, "x", "FP64", 2, (int64_t)1 << 61, (int64_t)2);
  rb_raw(&b, 0, buf, 8);
  expect_refused("byte size overflow", &b, NULL, 0, "'x'", "too large", NULL);

  rb_init(&b);
  rb_input(&b, "x", "FP32", 1, (int64_t)1);
  rb_input(&b, "x", "FP32", 1, (int64_t)1);
  rb_raw(&b, 0, buf, 4);
  rb_raw(&b, 1, buf, 4);
  expect_refused("duplicate input", &b, NULL, 0, "'x'", "given twice", "inputs[0]", "inputs[1]",
                 NULL);

  rb_init(&b);
  rb_input(&b, "a", "FP32", 1, (int64_t)1);
  rb_input(&b, "b", "FP32", 1, (int64_t)1);
  rb_raw(&b, 0, buf, 4);
  expect_refused("raw count", &b, NULL, 0, "raw_input_contents has 1 entries", "2 inputs",
                 "one entry per input", NULL);

  rb_init(&b);
  rb_input(&b, "x", "FP32", 1, (int64_t)1);
  rb_raw(&b, 0, buf, 4);
  rb_contents(&b, 0);
  expect_refused("contents and raw", &b, NULL, 0, "'x'", "both contents and raw_input_contents",
                 NULL);

  rb_init(&b);
  rb_input(&b, "x", "FP32", 2, (int64_t)2, (int64_t)3);
  expect_refused("no data", &b, NULL, 0, "'x'", "no data", "6 element(s)",
                 "contents.fp32_contents", NULL);

  rb_init(&b);
  rb_input(&b, "h", "FP16", 1, (int64_t)3);
  expect_refused("no data FP16", &b, NULL, 0, "'h'", "raw_input_contents", NULL);
}

static void test_raw(void) {
  req_builder b;
  velo_oip_request r;
  uint8_t buf[256] = {0};
  const char *two[] = {"hello", ""};
  size_t n;

  rb_init(&b);
  rb_input(&b, "x", "FP32", 1, (int64_t)4);
  rb_raw(&b, 0, buf, 12);
  expect_refused("raw size", &b, NULL, 0, "'x'", "has 12 bytes", "[4]", "needs 16",
                 "4 element(s) x 4 bytes", NULL);

  rb_init(&b);
  rb_input(&b, "x", "INT16", 2, (int64_t)2, (int64_t)3);
  rb_raw(&b, 0, buf, 12);
  if (expect_ok("raw INT16", &b, NULL, 0, &r)) {
    CHECK(r.n_inputs == 1 && r.inputs[0].datatype == VELO_DATATYPE_INT16, "datatype");
    CHECK(r.inputs[0].data == buf && r.inputs[0].size == 12, "raw is borrowed as is");
    CHECK(r.inputs[0].n_dims == 2 && r.inputs[0].shape[0] == 2 && r.inputs[0].shape[1] == 3,
          "shape");
    CHECK(strcmp(r.inputs[0].name, "x") == 0, "name");
  }
  velo_oip_request_free(&r);

  /* 0-size dimensions are an empty tensor: legal, with no data. */
  rb_init(&b);
  rb_input(&b, "x", "FP32", 2, (int64_t)0, (int64_t)3);
  rb_raw(&b, 0, buf, 0);
  if (expect_ok("empty tensor raw", &b, NULL, 0, &r)) CHECK(r.inputs[0].size == 0, "size 0");
  velo_oip_request_free(&r);
  rb_init(&b);
  rb_input(&b, "x", "FP32", 1, (int64_t)0);
  if (expect_ok("empty tensor without data", &b, NULL, 0, &r))
    CHECK(r.inputs[0].size == 0, "size 0");
  velo_oip_request_free(&r);

  /* A scalar (shape []) has one element. */
  rb_init(&b);
  rb_input(&b, "s", "INT64", 0);
  rb_raw(&b, 0, buf, 8);
  if (expect_ok("scalar", &b, NULL, 0, &r)) CHECK(r.inputs[0].n_dims == 0, "no dims");
  velo_oip_request_free(&r);
  rb_init(&b);
  rb_input(&b, "s", "INT64", 0);
  rb_raw(&b, 0, buf, 16);
  expect_refused("scalar size", &b, NULL, 0, "'s'", "has 16 bytes", "needs 8", NULL);

  /* BYTES in raw form. */
  n = bytes_of(buf, 2, two);
  rb_init(&b);
  rb_input(&b, "t", "BYTES", 1, (int64_t)2);
  rb_raw(&b, 0, buf, n);
  if (expect_ok("raw BYTES", &b, NULL, 0, &r)) CHECK(r.inputs[0].size == n, "size");
  velo_oip_request_free(&r);

  rb_init(&b);
  rb_input(&b, "t", "BYTES", 1, (int64_t)3);
  rb_raw(&b, 0, buf, n);
  expect_refused("BYTES too few", &b, NULL, 0, "'t'", "holds 2 BYTES element(s)", "[3]",
                 "needs 3", NULL);

  rb_init(&b);
  rb_input(&b, "t", "BYTES", 1, (int64_t)1);
  rb_raw(&b, 0, buf, n);
  expect_refused("BYTES extra", &b, NULL, 0, "'t'", "4 byte(s) left after the 1 BYTES element",
                 NULL);

  rb_init(&b);
  rb_input(&b, "t", "BYTES", 1, (int64_t)2);
  rb_raw(&b, 0, buf, n - 2); /* the second prefix cut short */
  expect_refused("BYTES prefix cut", &b, NULL, 0, "'t'", "element 1", "byte 9",
                 "length prefix is cut short", "2 byte(s) left", NULL);

  rb_init(&b);
  rb_input(&b, "t", "BYTES", 1, (int64_t)1);
  rb_raw(&b, 0, buf, 7); /* claims 5 bytes, 3 follow */
  expect_refused("BYTES overrun", &b, NULL, 0, "'t'", "length prefix 5", "only 3 byte(s)", NULL);

  {
    uint8_t big[8] = {0xff, 0xff, 0xff, 0xff, 'a', 'b', 'c', 'd'};
    rb_init(&b);
    rb_input(&b, "t", "BYTES", 1, (int64_t)1);
    rb_raw(&b, 0, big, sizeof big);
    expect_refused("BYTES huge prefix", &b, NULL, 0, "'t'", "4294967295", NULL);
  }
}

static void test_typed(void) {
  req_builder b;
  velo_oip_request r;
  Inference__InferTensorContents *c;

  {
    protobuf_c_boolean v[3] = {1, 0, 1};
    rb_init(&b);
    rb_input(&b, "b", "BOOL", 1, (int64_t)3);
    c = rb_contents(&b, 0);
    c->n_bool_contents = 3;
    c->bool_contents = v;
    if (expect_ok("BOOL", &b, NULL, 0, &r)) {
      const uint8_t *d = r.inputs[0].data;
      CHECK(r.inputs[0].size == 3 && d[0] == 1 && d[1] == 0 && d[2] == 1, "BOOL bytes");
    }
    velo_oip_request_free(&r);
  }
  {
    int32_t v[2] = {-2, 300};
    rb_init(&b);
    rb_input(&b, "i", "INT16", 1, (int64_t)2);
    c = rb_contents(&b, 0);
    c->n_int_contents = 2;
    c->int_contents = v;
    if (expect_ok("INT16", &b, NULL, 0, &r)) {
      const uint8_t *d = r.inputs[0].data;
      CHECK(r.inputs[0].size == 4 && d[0] == 0xFE && d[1] == 0xFF && d[2] == 0x2C && d[3] == 0x01,
            "INT16 little-endian");
    }
    velo_oip_request_free(&r);

    rb_init(&b);
    rb_input(&b, "i", "INT8", 1, (int64_t)2);
    c = rb_contents(&b, 0);
    c->n_int_contents = 2;
    c->int_contents = v;
    expect_refused("INT8 range", &b, NULL, 0, "'i'", "int_contents[1] = 300", "does not fit INT8",
                   "-128..127", NULL);
  }
  {
    uint32_t v[2] = {7, 256};
    rb_init(&b);
    rb_input(&b, "u", "UINT8", 1, (int64_t)2);
    c = rb_contents(&b, 0);
    c->n_uint_contents = 2;
    c->uint_contents = v;
    expect_refused("UINT8 range", &b, NULL, 0, "'u'", "uint_contents[1] = 256",
                   "does not fit UINT8", NULL);
    v[1] = 255;
    if (expect_ok("UINT8", &b, NULL, 0, &r)) {
      const uint8_t *d = r.inputs[0].data;
      CHECK(r.inputs[0].size == 2 && d[0] == 7 && d[1] == 255, "UINT8 bytes");
    }
    velo_oip_request_free(&r);
  }
  {
    int64_t v[2] = {-1, (int64_t)0x0102030405060708};
    rb_init(&b);
    rb_input(&b, "l", "INT64", 1, (int64_t)2);
    c = rb_contents(&b, 0);
    c->n_int64_contents = 2;
    c->int64_contents = v;
    if (expect_ok("INT64", &b, NULL, 0, &r)) {
      const uint8_t *d = r.inputs[0].data;
      CHECK(r.inputs[0].size == 16 && d[0] == 0xFF && d[7] == 0xFF && d[8] == 0x08 && d[15] == 0x01,
            "INT64 little-endian");
    }
    velo_oip_request_free(&r);
  }
  {
    uint64_t v[1] = {UINT64_MAX};
    rb_init(&b);
    rb_input(&b, "q", "UINT64", 1, (int64_t)1);
    c = rb_contents(&b, 0);
    c->n_uint64_contents = 1;
    c->uint64_contents = v;
    if (expect_ok("UINT64", &b, NULL, 0, &r)) {
      const uint8_t *d = r.inputs[0].data;
      CHECK(r.inputs[0].size == 8 && d[0] == 0xFF && d[7] == 0xFF, "UINT64 bytes");
    }
    velo_oip_request_free(&r);
  }
  {
    float v[2] = {1.5f, -2.0f};
    double w[1] = {0.25};
    rb_init(&b);
    rb_input(&b, "f", "FP32", 1, (int64_t)2);
    rb_input(&b, "g", "FP64", 0);
    c = rb_contents(&b, 0);
    c->n_fp32_contents = 2;
    c->fp32_contents = v;
    c = rb_contents(&b, 1);
    c->n_fp64_contents = 1;
    c->fp64_contents = w;
    if (expect_ok("FP32 + FP64", &b, NULL, 0, &r)) {
      float f[2];
      double g;
      memcpy(f, r.inputs[0].data, 8);
      memcpy(&g, r.inputs[1].data, 8);
      CHECK(r.inputs[0].size == 8 && f[0] == 1.5f && f[1] == -2.0f, "FP32 values");
      CHECK(r.inputs[1].size == 8 && g == 0.25, "FP64 value");
    }
    velo_oip_request_free(&r);
  }
  {
    ProtobufCBinaryData v[2] = {{3, (uint8_t *)"abc"}, {0, NULL}};
    rb_init(&b);
    rb_input(&b, "t", "BYTES", 1, (int64_t)2);
    c = rb_contents(&b, 0);
    c->n_bytes_contents = 2;
    c->bytes_contents = v;
    if (expect_ok("BYTES typed", &b, NULL, 0, &r)) {
      static const uint8_t want[] = {3, 0, 0, 0, 'a', 'b', 'c', 0, 0, 0, 0};
      CHECK(r.inputs[0].size == sizeof want && memcmp(r.inputs[0].data, want, sizeof want) == 0,
            "BYTES get 4-byte length prefixes");
    }
    velo_oip_request_free(&r);
  }
  {
    float v[3] = {1, 2, 3};
    rb_init(&b);
    rb_input(&b, "l", "INT64", 1, (int64_t)3);
    c = rb_contents(&b, 0);
    c->n_fp32_contents = 3;
    c->fp32_contents = v;
    expect_refused("wrong field", &b, NULL, 0, "'l'", "INT64", "contents.int64_contents",
                   "contents.fp32_contents has 3 entries", NULL);

    rb_init(&b);
    rb_input(&b, "f", "FP32", 2, (int64_t)2, (int64_t)2);
    c = rb_contents(&b, 0);
    c->n_fp32_contents = 3;
    c->fp32_contents = v;
    expect_refused("wrong count", &b, NULL, 0, "'f'", "contents.fp32_contents has 3 element(s)",
                   "[2, 2]", "needs 4", NULL);

    rb_init(&b);
    rb_input(&b, "h", "FP16", 1, (int64_t)3);
    c = rb_contents(&b, 0);
    c->n_fp32_contents = 3;
    c->fp32_contents = v;
    expect_refused("FP16 typed", &b, NULL, 0, "'h'", "FP16 has no typed contents field",
                   "raw_input_contents", NULL);

    rb_init(&b);
    rb_input(&b, "h", "BF16", 1, (int64_t)3);
    rb_contents(&b, 0);
    expect_refused("BF16 empty contents", &b, NULL, 0, "'h'", "BF16 has no typed contents field",
                   "raw_input_contents", NULL);
  }
}

static void test_declared(void) {
  req_builder b;
  velo_oip_request r;
  uint8_t buf[64] = {0};
  velo_io_desc decl[2] = {
      {.struct_size = sizeof(velo_io_desc), .name = "text_input",
       .datatype = VELO_DATATYPE_BYTES, .n_dims = 1, .shape = {1}},
      {.struct_size = sizeof(velo_io_desc), .name = "mask", .datatype = VELO_DATATYPE_INT32,
       .n_dims = 2, .shape = {-1, 4}, .optional = true},
  };
  const char *one[] = {"hi"};
  size_t n = bytes_of(buf, 1, one);

  rb_init(&b);
  rb_input(&b, "text_input", "BYTES", 1, (int64_t)1);
  rb_raw(&b, 0, buf, n);
  if (expect_ok("declared input", &b, decl, 2, &r)) CHECK(r.n_inputs == 1, "one input");
  velo_oip_request_free(&r);

  rb_init(&b);
  rb_input(&b, "mask", "INT32", 2, (int64_t)3, (int64_t)4);
  rb_raw(&b, 0, buf, 48);
  expect_refused("missing input", &b, decl, 2, "'text_input'", "BYTES [1]", "is missing",
                 "model 'm' requires it", NULL);

  rb_init(&b);
  rb_input(&b, "text_input", "BYTES", 1, (int64_t)1);
  rb_input(&b, "extra", "FP32", 1, (int64_t)1);
  rb_raw(&b, 0, buf, n);
  rb_raw(&b, 1, buf, 4);
  expect_refused("undeclared input", &b, decl, 2, "'extra'", "not an input of model 'm'",
                 "text_input (BYTES [1])", "mask (INT32 [-1, 4])", NULL);

  rb_init(&b);
  rb_input(&b, "text_input", "FP32", 1, (int64_t)1);
  rb_raw(&b, 0, buf, 4);
  expect_refused("declared datatype", &b, decl, 2, "'text_input'", "is BYTES", "got FP32", NULL);

  rb_init(&b);
  rb_input(&b, "text_input", "BYTES", 1, (int64_t)2);
  rb_raw(&b, 0, buf, n);
  expect_refused("declared shape", &b, decl, 2, "'text_input'", "must have shape [1]",
                 "got [2]", NULL);

  rb_init(&b);
  rb_input(&b, "text_input", "BYTES", 1, (int64_t)1);
  rb_input(&b, "mask", "INT32", 2, (int64_t)3, (int64_t)5);
  rb_raw(&b, 0, buf, n);
  rb_raw(&b, 1, buf, 60);
  expect_refused("declared shape -1", &b, decl, 2, "'mask'", "[-1, 4]", "got [3, 5]", NULL);

  rb_init(&b);
  rb_input(&b, "text_input", "BYTES", 1, (int64_t)0); /* 0 where 1 is declared */
  rb_raw(&b, 0, buf, 0);
  expect_refused("declared zero", &b, decl, 2, "'text_input'", "must have shape [1]", "got [0]",
                 NULL);

  rb_init(&b);
  expect_refused("no inputs, declared", &b, decl, 2, "no inputs", "text_input (BYTES [1])", NULL);
}

static void test_params(void) {
  req_builder b;
  velo_oip_request r;
  uint8_t buf[8] = {0};
  Inference__InferParameter *p;

#define BASE()                                \
  do {                                        \
    rb_init(&b);                              \
    rb_input(&b, "x", "FP32", 1, (int64_t)1); \
    rb_raw(&b, 0, buf, 4);                    \
  } while (0)

  BASE();
  p = rb_param(&b, "max_tokens");
  p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
  p->int64_param = 12;
  p = rb_param(&b, "temperature");
  p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
  p->double_param = 0.5;
  p = rb_param(&b, "ignore_eos");
  p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
  p->bool_param = 1;
  p = rb_param(&b, "seed");
  p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM;
  p->uint64_param = UINT64_MAX;
  p = rb_param(&b, "stream");
  p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
  p->bool_param = 0;
  rb_string(&b, "stop", "\n\n");
  if (expect_ok("parameters", &b, NULL, 0, &r)) {
    CHECK(r.n_params == 5, "5 parameters passed on (stream consumed), got %zu", r.n_params);
    CHECK(r.stream_set && !r.stream, "stream consumed as false");
    CHECK(r.n_params >= 5 && strcmp(r.params[0].key, "max_tokens") == 0 &&
              r.params[0].type == VELO_PARAM_INT64 && r.params[0].value.i == 12, "max_tokens");
    CHECK(r.n_params >= 5 && r.params[1].type == VELO_PARAM_DOUBLE && r.params[1].value.d == 0.5,
          "temperature");
    CHECK(r.n_params >= 5 && r.params[2].type == VELO_PARAM_BOOL && r.params[2].value.b,
          "ignore_eos");
    CHECK(r.n_params >= 5 && r.params[3].type == VELO_PARAM_INT64 && r.params[3].value.i == -1,
          "seed keeps its 64 bits");
    CHECK(r.n_params >= 5 && r.params[4].type == VELO_PARAM_STRING &&
              r.params[4].value.s.len == 2 && memcmp(r.params[4].value.s.ptr, "\n\n", 2) == 0,
          "a plain stop string");
  }
  velo_oip_request_free(&r);

  BASE();
  rb_string(&b, "stop", " [\"END\", \"a\\nb\", \"\\u00e9\\ud83d\\ude00\", \"x\\\"y\"] ");
  if (expect_ok("stop array", &b, NULL, 0, &r)) {
    CHECK(r.n_params == 4, "4 stop strings, got %zu", r.n_params);
    if (r.n_params == 4) {
      CHECK(strcmp(r.params[0].key, "stop") == 0 && strcmp(r.params[0].value.s.ptr, "END") == 0,
            "stop 0");
      CHECK(strcmp(r.params[1].value.s.ptr, "a\nb") == 0, "stop 1: \\n decoded");
      CHECK(strcmp(r.params[2].value.s.ptr, "\xC3\xA9\xF0\x9F\x98\x80") == 0,
            "stop 2: \\u and a surrogate pair decoded to UTF-8");
      CHECK(strcmp(r.params[3].value.s.ptr, "x\"y") == 0 && r.params[3].value.s.len == 3,
            "stop 3: \\\" decoded");
    }
  }
  velo_oip_request_free(&r);

  BASE();
  rb_string(&b, "stop", "[]");
  if (expect_ok("empty stop array", &b, NULL, 0, &r)) CHECK(r.n_params == 0, "no stop strings");
  velo_oip_request_free(&r);

  BASE();
  rb_string(&b, "stop", "[\"a\",");
  expect_refused("bad stop array", &b, NULL, 0, "parameter stop", "JSON array of strings",
                 "byte 5", "expected a string", "one-element array", NULL);
  BASE();
  rb_string(&b, "stop", "[\"a\" \"b\"]");
  expect_refused("stop array without comma", &b, NULL, 0, "byte 5", "expected ',' or ']'", NULL);
  BASE();
  rb_string(&b, "stop", "[\"\\ud800\"]");
  expect_refused("stop lone surrogate", &b, NULL, 0, "surrogate", NULL);
  BASE();
  rb_string(&b, "stop", "[\"\\u0000\"]");
  expect_refused("stop NUL", &b, NULL, 0, "NUL", NULL);
  BASE();
  rb_string(&b, "stop", "[\"a\"] x");
  expect_refused("stop trailing text", &b, NULL, 0, "text follows the array", NULL);
  BASE();
  rb_string(&b, "stop", "[\"a\tb\"]");
  expect_refused("stop raw control character", &b, NULL, 0, "control character", NULL);

  /* Stop limits (VELO_OIP_MAX_STOP strings of VELO_OIP_MAX_STOP_BYTES). */
  {
    static char big[64 * 1024];
    size_t used = 0;
    used += (size_t)sprintf(big + used, "[");
    for (int i = 0; i < VELO_OIP_MAX_STOP; i++)
      used += (size_t)sprintf(big + used, "%s\"s%d\"", i ? "," : "", i);
    sprintf(big + used, "]");
    BASE();
    rb_string(&b, "stop", big);
    if (expect_ok("16 stop strings", &b, NULL, 0, &r)) {
      CHECK(r.n_params == VELO_OIP_MAX_STOP, "16 stop strings, got %zu", r.n_params);
      velo_oip_request_free(&r);
    }
    sprintf(big + used, ",\"one more\"]");
    BASE();
    rb_string(&b, "stop", big);
    expect_refused("17 stop strings", &b, NULL, 0, "at most 16 stop strings are allowed",
                   "got more", NULL);
    /* 50000 strings: refused at the 17th, nothing quadratic kept. */
    used = 0;
    used += (size_t)sprintf(big + used, "[");
    for (int i = 0; i < 5000; i++) used += (size_t)sprintf(big + used, "%s\"s\"", i ? "," : "");
    sprintf(big + used, "]");
    BASE();
    rb_string(&b, "stop", big);
    expect_refused("5000 stop strings", &b, NULL, 0, "at most 16", NULL);
    memset(big, 'a', sizeof big);
    big[0] = '[';
    big[1] = '"';
    big[2 + VELO_OIP_MAX_STOP_BYTES] = '"';
    big[3 + VELO_OIP_MAX_STOP_BYTES] = ']';
    big[4 + VELO_OIP_MAX_STOP_BYTES] = '\0';
    BASE();
    rb_string(&b, "stop", big);
    if (expect_ok("256-byte stop string", &b, NULL, 0, &r)) {
      CHECK(r.n_params == 1 && r.params[0].value.s.len == VELO_OIP_MAX_STOP_BYTES,
            "one 256-byte stop string");
      velo_oip_request_free(&r);
    }
    big[2 + VELO_OIP_MAX_STOP_BYTES] = 'a';
    big[3 + VELO_OIP_MAX_STOP_BYTES] = '"';
    big[4 + VELO_OIP_MAX_STOP_BYTES] = ']';
    big[5 + VELO_OIP_MAX_STOP_BYTES] = '\0';
    BASE();
    rb_string(&b, "stop", big);
    expect_refused("257-byte stop string", &b, NULL, 0, "stop string 0 has 257 bytes",
                   "at most 256", NULL);
    BASE();
    rb_string(&b, "stop", "[\"\\u00e9\\n\", \"abc");
    expect_refused("stop string not closed", &b, NULL, 0, "not closed", NULL);
  }

  BASE();
  p = rb_param(&b, "stream");
  p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
  p->int64_param = 1;
  expect_refused("stream not bool", &b, NULL, 0, "parameter stream must be a bool",
                 "got int64_param", NULL);

  BASE();
  p = rb_param(&b, "max_tokens");
  p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM;
  p->uint64_param = (uint64_t)INT64_MAX + 1;
  expect_refused("uint64 too large", &b, NULL, 0, "'max_tokens'", "too large", NULL);

  BASE();
  rb_param(&b, "top_k"); /* no value set */
  expect_refused("no value", &b, NULL, 0, "'top_k' has no value", "bool_param", NULL);

  BASE();
  rb_string(&b, "", "v");
  expect_refused("empty key", &b, NULL, 0, "key must not be empty", NULL);
#undef BASE
}

/* Names for test_duplicates: "n<i>", except where a repeat is planted. */
static const char *dup_name(const void *ctx, size_t i) {
  static char names[20000][16];
  const size_t *plant = ctx; /* {a, b, c, d}: name b = name a, name d = name c */
  if (i == plant[1]) i = plant[0];
  if (i == plant[3]) i = plant[2];
  snprintf(names[i], sizeof names[i], "n%zu", i);
  return names[i];
}

/* velo_oip_first_duplicate at scale, the per-request caps, and shapes
 * with a 0 anywhere (element count independent of the dims' order). */
static void test_limits(void) {
  size_t plant[4] = {500, 19000, 7, 12000}, first = 0, second = 0;
  req_builder b;
  velo_oip_request r;
  uint8_t buf[4] = {0};
  int found;

  found = velo_oip_first_duplicate(dup_name, plant, 20000, &first, &second);
  CHECK(found == 1 && first == 7 && second == 12000, "first repeat: %d %zu %zu", found, first,
        second);
  plant[1] = 20001;
  plant[3] = 20001;
  found = velo_oip_first_duplicate(dup_name, plant, 20000, &first, &second);
  CHECK(found == 0, "no repeat among 20000 names");

  /* The same repeat reported as before: the earliest second place. */
  rb_init(&b);
  rb_input(&b, "y", "UINT8", 1, (int64_t)0);
  rb_input(&b, "x", "UINT8", 1, (int64_t)0);
  rb_input(&b, "x", "UINT8", 1, (int64_t)0);
  rb_input(&b, "y", "UINT8", 1, (int64_t)0);
  expect_refused("first repeat", &b, NULL, 0, "input 'x' is given twice (inputs[1] and inputs[2])",
                 NULL);

  /* A 0 dimension anywhere: 0 elements, whatever the others. */
  rb_init(&b);
  rb_input(&b, "x", "UINT8", 3, (int64_t)1 << 62, (int64_t)1 << 62, (int64_t)0);
  rb_raw(&b, 0, buf, 0);
  if (expect_ok("[2^62, 2^62, 0]", &b, NULL, 0, &r)) velo_oip_request_free(&r);
  rb_init(&b);
  rb_input(&b, "x", "UINT8", 3, (int64_t)0, (int64_t)1 << 62, (int64_t)1 << 62);
  rb_raw(&b, 0, buf, 0);
  if (expect_ok("[0, 2^62, 2^62]", &b, NULL, 0, &r)) velo_oip_request_free(&r);
  rb_init(&b);
  rb_input(&b, "x", "UINT8", 3, (int64_t)1 << 62, (int64_t)4, (int64_t)1);
  rb_raw(&b, 0, buf, 0);
  expect_refused("[2^62, 4, 1]", &b, NULL, 0, "too many elements", NULL);

  /* More than VELO_OIP_MAX_TENSORS inputs. */
  {
    size_t n = VELO_OIP_MAX_TENSORS + 1;
    Inference__ModelInferRequest req = INFERENCE__MODEL_INFER_REQUEST__INIT;
    Inference__ModelInferRequest__InferInputTensor *in = calloc(n, sizeof *in), **inp =
        calloc(n, sizeof *inp);
    velo_error err;
    velo_status st;
    CHECK(in && inp, "out of memory");
    if (in && inp) {
      for (size_t i = 0; i < n; i++) {
        inference__model_infer_request__infer_input_tensor__init(&in[i]);
        in[i].name = (char *)"x";
        in[i].datatype = (char *)"UINT8";
        inp[i] = &in[i];
      }
      req.n_inputs = n;
      req.inputs = inp;
      velo_error_init(&err);
      st = velo_oip_request_convert(&req, "m", NULL, 0, &r, &err);
      CHECK(st == VELO_INVALID_ARGUMENT && strstr(err.message, "too many inputs: 4097") &&
                strstr(err.message, "at most 4096"),
            "4097 inputs: %s", err.message);
      velo_oip_request_free(&r);
    }
    free(in);
    free(inp);
  }
}

int main(void) {
  test_limits();
  test_structure();
  test_raw();
  test_typed();
  test_declared();
  test_params();
  return check_summary("test_oip_validate");
}
