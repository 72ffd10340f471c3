/*
 * test_identity.c - unit tests of the "identity" task plugin through its
 * task table, as velod would use it: the real libvelo-task-identity.so is
 * dlopen'ed (argv[1]) and driven with a fake host whose respond() records
 * every response.  Covers round trips for every datatype (BYTES, FP16,
 * BF16, BOOL included), output naming, declared inputs, the request checks
 * (each a submit error with no response), cancellation, the queue limit,
 * unloading with requests queued, and concurrent submits.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "velo/plugin.h"

/* ------------------------------------------------------------------ */
/* The fake host                                                       */
/* ------------------------------------------------------------------ */

#define MAX_OUT 16

/* A recorded output tensor (deep copy). */
typedef struct rec_tensor {
  char name[64];
  velo_datatype datatype;
  int32_t n_dims;
  int64_t shape[VELO_MAX_IO_DIMS];
  unsigned char *data;
  size_t size;
} rec_tensor;

/* The fake's call handle: one request and what came back for it. */
struct velo_call {
  atomic_bool cancelled;
  int n_responses; /* respond() calls */
  int n_final;
  velo_status status;
  char message[VELO_ERROR_MESSAGE_MAX];
  size_t n_out;
  rec_tensor out[MAX_OUT];
};

static pthread_mutex_t host_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t host_cv = PTHREAD_COND_INITIALIZER;
static bool gate_closed;   /* respond() waits while true */
static int in_respond;     /* respond() calls that have started */

static velo_status fake_respond(velo_call *call, const velo_response *resp) {
  pthread_mutex_lock(&host_mu);
  in_respond++;
  pthread_cond_broadcast(&host_cv);
  while (gate_closed) pthread_cond_wait(&host_cv, &host_mu);
  call->n_responses++;
  if (resp->final) call->n_final++;
  call->status = resp->status;
  snprintf(call->message, sizeof call->message, "%s", resp->error_message ? resp->error_message : "");
  call->n_out = resp->n_outputs < MAX_OUT ? resp->n_outputs : MAX_OUT;
  for (size_t i = 0; i < call->n_out; i++) {
    const velo_io_tensor *t = &resp->outputs[i];
    rec_tensor *r = &call->out[i];
    snprintf(r->name, sizeof r->name, "%s", t->name);
    r->datatype = t->datatype;
    r->n_dims = t->n_dims;
    memcpy(r->shape, t->shape, (size_t)t->n_dims * sizeof *t->shape);
    r->data = malloc(t->size ? t->size : 1);
    memcpy(r->data, t->data, t->size);
    r->size = t->size;
  }
  pthread_cond_broadcast(&host_cv);
  pthread_mutex_unlock(&host_mu);
  return VELO_OK;
}

static bool fake_cancelled(velo_call *call) { return atomic_load(&call->cancelled); }

static void fake_log(velo_log_level level, const char *source, const char *fmt, ...) {
  (void)level;
  (void)source;
  (void)fmt;
}

static velo_host host = {
    .struct_size = sizeof(velo_host),
    .abi_major = VELO_ABI_MAJOR,
    .abi_minor = VELO_ABI_MINOR,
    .version = "test",
    .log = fake_log,
    .respond = fake_respond,
    .call_cancelled = fake_cancelled,
};

static void call_init(velo_call *c) {
  memset(c, 0, sizeof *c);
  atomic_init(&c->cancelled, false);
}

static void call_free(velo_call *c) {
  for (size_t i = 0; i < c->n_out; i++) free(c->out[i].data);
  c->n_out = 0;
}

/* Waits (bounded, 10 s) for the final response of c. */
static bool wait_final(velo_call *c) {
  bool done = false;
  for (int i = 0; i < 10000 && !done; i++) {
    pthread_mutex_lock(&host_mu);
    done = c->n_final > 0;
    pthread_mutex_unlock(&host_mu);
    if (!done) usleep(1000);
  }
  return done;
}

/* Waits (bounded) until respond() has been entered n times. */
static bool wait_in_respond(int n) {
  bool ok = false;
  for (int i = 0; i < 10000 && !ok; i++) {
    pthread_mutex_lock(&host_mu);
    ok = in_respond >= n;
    pthread_mutex_unlock(&host_mu);
    if (!ok) usleep(1000);
  }
  return ok;
}

static void set_gate(bool closed) {
  pthread_mutex_lock(&host_mu);
  gate_closed = closed;
  pthread_cond_broadcast(&host_cv);
  pthread_mutex_unlock(&host_mu);
}

/* ------------------------------------------------------------------ */
/* Helpers                                                             */
/* ------------------------------------------------------------------ */

static const velo_task_iface *task;

static velo_param str_param(const char *key, const char *value) {
  velo_param p = {.struct_size = sizeof p, .key = key, .type = VELO_PARAM_STRING};
  p.value.s.ptr = value;
  p.value.s.len = strlen(value);
  return p;
}

/* Loads a model with the given parameters; returns NULL and fills err on failure. */
static velo_model *load(const char *name, size_t n_params, const velo_param *params, velo_error *err) {
  velo_model_config cfg = {.struct_size = sizeof cfg, .name = name, .path = "",
                           .backend_name = "cpu", .n_params = n_params, .params = params};
  velo_model *m = NULL;
  velo_error_init(err);
  velo_status st = task->model_load(&host, &cfg, &m, err);
  return st == VELO_OK ? m : NULL;
}

static velo_io_tensor tensor(const char *name, velo_datatype dt, int32_t n_dims, const int64_t *shape,
                             const void *data, size_t size) {
  velo_io_tensor t = {.struct_size = sizeof t, .name = name, .datatype = dt, .n_dims = n_dims,
                      .shape = shape, .data = data, .size = size};
  return t;
}

static velo_status submit(velo_model *m, velo_call *c, size_t n, const velo_io_tensor *in,
                          velo_error *err) {
  velo_request req = {.struct_size = sizeof req, .call = c, .id = "", .n_inputs = n, .inputs = in};
  velo_error_init(err);
  return task->submit(m, &req, err);
}

/* Submits and expects a refusal with code and a message containing want;
 * respond() must not be called. */
static void expect_refused(velo_model *m, size_t n, const velo_io_tensor *in, velo_status code,
                           const char *want, const char *what) {
  velo_call c;
  velo_error err;
  call_init(&c);
  velo_status st = submit(m, &c, n, in, &err);
  CHECK(st == code, "%s: status %s, want %s (%s)", what, velo_status_name(st), velo_status_name(code),
        err.message);
  CHECK(strstr(err.message, want) != NULL, "%s: message '%s' lacks '%s'", what, err.message, want);
  usleep(2000);
  CHECK(c.n_responses == 0, "%s: respond called %d times for a refused request", what, c.n_responses);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

/* Every datatype in one request comes back byte for byte. */
static void test_round_trip_all_types(void) {
  velo_error err;
  velo_model *m = load("any", 0, NULL, &err);
  CHECK(m != NULL, "load: %s", err.message);
  if (!m) return;
  velo_model_metadata md = {.struct_size = sizeof md};
  CHECK(task->model_metadata(m, &md, &err) == VELO_OK, "metadata: %s", err.message);
  CHECK(md.n_inputs == 0 && md.n_outputs == 0, "undeclared model has %zu inputs", md.n_inputs);
  CHECK(strcmp(md.platform, "velo_identity") == 0, "platform %s", md.platform);

  static const float f32[6] = {1.5f, -2, 3, 4, 5, 6};
  static const int64_t i64[3] = {-1, 0, INT64_MAX};
  static const uint8_t b[4] = {1, 0, 1, 1};
  static const uint16_t f16[2] = {0x3C00, 0xC000};
  static const uint16_t bf16[2] = {0x3F80, 0x4000};
  static const unsigned char bytes[] = {3, 0, 0, 0, 'a', 'b', 'c', 0, 0, 0, 0, 2, 0, 0, 0, 0, 0xFF};
  static const uint8_t u8[1] = {7};
  static const double f64[1] = {2.25};
  static const int64_t s23[2] = {2, 3}, s3[1] = {3}, s22[2] = {2, 2}, s2[1] = {2}, s0[2] = {0, 5};
  static const int64_t s1[1] = {1};
  velo_io_tensor in[] = {
      tensor("INPUT0", VELO_DATATYPE_FP32, 2, s23, f32, sizeof f32),
      tensor("INPUT12", VELO_DATATYPE_INT64, 1, s3, i64, sizeof i64),
      tensor("flags", VELO_DATATYPE_BOOL, 2, s22, b, sizeof b),
      tensor("half", VELO_DATATYPE_FP16, 1, s2, f16, sizeof f16),
      tensor("brain", VELO_DATATYPE_BF16, 1, s2, bf16, sizeof bf16),
      tensor("INPUT", VELO_DATATYPE_BYTES, 1, s3, bytes, sizeof bytes),
      tensor("INPUTx1", VELO_DATATYPE_UINT8, 0, NULL, u8, sizeof u8),
      tensor("d", VELO_DATATYPE_FP64, 1, s1, f64, sizeof f64),
      tensor("empty", VELO_DATATYPE_INT32, 2, s0, NULL, 0),
  };
  const char *want_names[] = {"OUTPUT0", "OUTPUT12", "flags", "half", "brain", "INPUT", "INPUTx1", "d",
                              "empty"};
  size_t n = sizeof in / sizeof in[0];
  velo_call c;
  call_init(&c);
  velo_status st = submit(m, &c, n, in, &err);
  CHECK(st == VELO_OK, "submit: %s", err.message);
  CHECK(wait_final(&c), "no final response");
  CHECK(c.n_responses == 1 && c.n_final == 1, "%d responses, %d final", c.n_responses, c.n_final);
  CHECK(c.status == VELO_OK, "status %s: %s", velo_status_name(c.status), c.message);
  CHECK(c.n_out == n, "%zu outputs, want %zu", c.n_out, n);
  for (size_t i = 0; i < c.n_out && i < n; i++) {
    rec_tensor *r = &c.out[i];
    CHECK(strcmp(r->name, want_names[i]) == 0, "output %zu named %s, want %s", i, r->name, want_names[i]);
    CHECK(r->datatype == in[i].datatype, "output %s datatype %d", r->name, (int)r->datatype);
    CHECK(r->n_dims == in[i].n_dims, "output %s rank %d", r->name, (int)r->n_dims);
    for (int32_t d = 0; d < r->n_dims && d < in[i].n_dims; d++)
      CHECK(r->shape[d] == in[i].shape[d], "output %s dim %d", r->name, (int)d);
    CHECK(r->size == in[i].size && (r->size == 0 || memcmp(r->data, in[i].data, r->size) == 0),
          "output %s bytes differ", r->name);
  }
  call_free(&c);
  task->model_unload(m);
}

/* Declared inputs: metadata, accepted requests, and each mismatch. */
static void test_declared(void) {
  velo_error err;
  velo_param p[2] = {str_param("inputs", "INPUT0:FP32:-1,4;INPUT1:BYTES:-1;mask:BOOL:"),
                     {.struct_size = sizeof(velo_param), .key = "max_queue_size", .type = VELO_PARAM_INT64,
                      .value.i = 8}};
  velo_model *m = load("decl", 2, p, &err);
  CHECK(m != NULL, "load: %s", err.message);
  if (!m) return;
  velo_model_metadata md = {.struct_size = sizeof md};
  CHECK(task->model_metadata(m, &md, &err) == VELO_OK, "metadata: %s", err.message);
  CHECK(md.n_inputs == 3 && md.n_outputs == 3, "declared %zu/%zu", md.n_inputs, md.n_outputs);
  if (md.n_inputs == 3 && md.n_outputs == 3) {
    CHECK(strcmp(md.inputs[0].name, "INPUT0") == 0 && md.inputs[0].datatype == VELO_DATATYPE_FP32 &&
              md.inputs[0].n_dims == 2 && md.inputs[0].shape[0] == -1 && md.inputs[0].shape[1] == 4,
          "input 0 %s", md.inputs[0].name);
    CHECK(strcmp(md.outputs[0].name, "OUTPUT0") == 0 && md.outputs[0].shape[1] == 4, "output 0 %s",
          md.outputs[0].name);
    CHECK(strcmp(md.outputs[1].name, "OUTPUT1") == 0 && md.outputs[1].datatype == VELO_DATATYPE_BYTES,
          "output 1 %s", md.outputs[1].name);
    CHECK(strcmp(md.outputs[2].name, "mask") == 0 && md.outputs[2].n_dims == 0, "output 2 %s",
          md.outputs[2].name);
  }

  static const float f32[8] = {0};
  static const unsigned char bytes[] = {1, 0, 0, 0, 'x'};
  static const uint8_t one = 1;
  static const int32_t i32[8] = {0};
  static const int64_t s24[2] = {2, 4}, s1[1] = {1}, s23[2] = {2, 3}, s8[1] = {8};
  velo_io_tensor ok[3] = {tensor("INPUT0", VELO_DATATYPE_FP32, 2, s24, f32, sizeof f32),
                          tensor("INPUT1", VELO_DATATYPE_BYTES, 1, s1, bytes, sizeof bytes),
                          tensor("mask", VELO_DATATYPE_BOOL, 0, NULL, &one, 1)};
  velo_call c;
  call_init(&c);
  CHECK(submit(m, &c, 3, ok, &err) == VELO_OK, "declared submit: %s", err.message);
  CHECK(wait_final(&c) && c.status == VELO_OK && c.n_out == 3, "declared round trip: %s", c.message);
  if (c.n_out == 3) CHECK(strcmp(c.out[1].name, "OUTPUT1") == 0, "name %s", c.out[1].name);
  call_free(&c);

  velo_io_tensor bad[3];
  memcpy(bad, ok, sizeof bad);
  bad[0] = tensor("INPUT0", VELO_DATATYPE_INT32, 2, s24, i32, sizeof i32);
  expect_refused(m, 3, bad, VELO_INVALID_ARGUMENT, "has datatype INT32, model 'decl' expects FP32",
                 "datatype mismatch");
  memcpy(bad, ok, sizeof bad);
  bad[0] = tensor("INPUT0", VELO_DATATYPE_FP32, 2, s23, f32, 6 * sizeof(float));
  expect_refused(m, 3, bad, VELO_INVALID_ARGUMENT, "has shape [2,3], model 'decl' expects [-1,4]",
                 "shape mismatch");
  bad[0] = tensor("INPUT0", VELO_DATATYPE_FP32, 1, s8, f32, sizeof f32);
  expect_refused(m, 3, bad, VELO_INVALID_ARGUMENT, "expects [-1,4]", "rank mismatch");
  memcpy(bad, ok, sizeof bad);
  bad[2] = tensor("other", VELO_DATATYPE_BOOL, 0, NULL, &one, 1);
  expect_refused(m, 3, bad, VELO_INVALID_ARGUMENT,
                 "input 'other' is not an input of model 'decl'; its inputs are: INPUT0 (FP32 [-1,4])",
                 "undeclared input");
  expect_refused(m, 2, ok, VELO_INVALID_ARGUMENT, "input 'mask' of model 'decl' is missing",
                 "missing input");
  task->model_unload(m);
}

/* Malformed tensors and requests are refused by submit() with no response. */
static void test_bad_requests(void) {
  velo_error err;
  velo_model *m = load("any", 0, NULL, &err);
  CHECK(m != NULL, "load: %s", err.message);
  if (!m) return;
  static const float f32[4] = {0};
  static const int64_t s4[1] = {4}, s3[1] = {3}, sneg[1] = {-2}, s2[1] = {2}, s1[1] = {1};
  static const int64_t sbig[3] = {INT64_MAX, INT64_MAX, 4};
  velo_io_tensor t;

  expect_refused(m, 0, NULL, VELO_INVALID_ARGUMENT, "the request has no inputs", "no inputs");
  t = tensor("INPUT0", VELO_DATATYPE_FP32, 1, s3, f32, sizeof f32);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "16 bytes of data, but shape x FP32 needs 3 x 4",
                 "size mismatch");
  t = tensor("INPUT0", VELO_DATATYPE_FP32, 1, sneg, f32, sizeof f32);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "dimension 0 is -2", "negative dimension");
  t = tensor("INPUT0", VELO_DATATYPE_FP32, 3, sbig, f32, sizeof f32);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "overflows", "overflowing shape");
  t = tensor("INPUT0", (velo_datatype)99, 1, s4, f32, sizeof f32);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "datatype 99 is not a datatype", "bad datatype");
  t = tensor("INPUT0", VELO_DATATYPE_FP32, 1, s4, NULL, 16);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "16 bytes but no data", "null data");
  t = tensor("", VELO_DATATYPE_FP32, 1, s4, f32, sizeof f32);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "has no name", "empty name");
  t = tensor("INPUT0", VELO_DATATYPE_FP32, 17, s4, f32, sizeof f32);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "17 dimensions", "too many dims");
  t = tensor("INPUT0", VELO_DATATYPE_FP32, 1, NULL, f32, sizeof f32);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "no shape", "null shape");

  static const unsigned char short_prefix[] = {1, 0, 0, 0, 'a', 2, 0};
  t = tensor("s", VELO_DATATYPE_BYTES, 1, s2, short_prefix, sizeof short_prefix);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "no complete 4-byte length prefix", "cut prefix");
  static const unsigned char long_len[] = {9, 0, 0, 0, 'a', 'b'};
  t = tensor("s", VELO_DATATYPE_BYTES, 1, s1, long_len, sizeof long_len);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "claims 9 bytes but only 2 are left", "long length");
  static const unsigned char huge_len[] = {0xFF, 0xFF, 0xFF, 0xFF, 'a'};
  t = tensor("s", VELO_DATATYPE_BYTES, 1, s1, huge_len, sizeof huge_len);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "claims 4294967295 bytes", "huge length");
  static const unsigned char extra[] = {1, 0, 0, 0, 'a', 'z'};
  t = tensor("s", VELO_DATATYPE_BYTES, 1, s1, extra, sizeof extra);
  expect_refused(m, 1, &t, VELO_INVALID_ARGUMENT, "1 bytes after the 1 BYTES element", "trailing bytes");

  velo_io_tensor two[2] = {tensor("x", VELO_DATATYPE_FP32, 1, s4, f32, sizeof f32),
                           tensor("x", VELO_DATATYPE_FP32, 1, s4, f32, sizeof f32)};
  expect_refused(m, 2, two, VELO_INVALID_ARGUMENT, "input 'x' is given twice", "duplicate");
  two[0].name = "INPUT3";
  two[1].name = "OUTPUT3";
  expect_refused(m, 2, two, VELO_INVALID_ARGUMENT, "would both be returned as output 'OUTPUT3'",
                 "output collision");
  char longname[300];
  memset(longname, 'n', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  two[0].name = longname;
  two[1].name = longname;
  expect_refused(m, 2, two, VELO_INVALID_ARGUMENT, "...' is given twice", "long name cut in message");

  velo_request req = {.struct_size = sizeof req, .call = NULL, .n_inputs = 1, .inputs = &t};
  velo_error_init(&err);
  CHECK(task->submit(m, &req, &err) == VELO_INVALID_ARGUMENT, "request without call accepted");
  req.struct_size = 4;
  CHECK(task->submit(m, &req, &err) == VELO_INVALID_ARGUMENT, "tiny request struct accepted");
  task->model_unload(m);
}

/* Model configurations that must be refused, each naming the problem. */
static void test_bad_configs(void) {
  static const struct {
    const char *inputs;
    const char *want;
  } cases[] = {
      {"", "parameter 'inputs' is empty"},
      {"INPUT0:FP32", "expected NAME:DATATYPE:DIMS"},
      {"INPUT0:FP32:1:2", "expected NAME:DATATYPE:DIMS"},
      {"INPUT0:FP33:1", "unknown datatype 'FP33'"},
      {"INPUT0:FP32:1,x", "bad dimension in '1,x'"},
      {"INPUT0:FP32:-2", "bad dimension in '-2'"},
      {"INPUT0:FP32:+2", "bad dimension"},
      {"INPUT0:FP32: 2", "bad dimension"},
      {"INPUT0:FP32:1,", "bad dimension"},
      {"INPUT0:FP32:1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", "more than 16 dimensions"},
      {":FP32:1", "the name must have 1 to 256 characters"},
      {"IN PUT:FP32:1", "may only use letters"},
      {"INPUT0:FP32:1;", "entry 2 is empty"},
      {";INPUT0:FP32:1", "entry 1 is empty"},
      {"a:FP32:1;a:INT8:1", "declares input 'a' twice"},
      {"INPUT0:FP32:1;OUTPUT0:FP32:1", "would both be returned as output 'OUTPUT0'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    velo_error err;
    velo_param p = str_param("inputs", cases[i].inputs);
    velo_model *m = load("cfg", 1, &p, &err);
    CHECK(m == NULL, "inputs '%s' accepted", cases[i].inputs);
    if (m) task->model_unload(m);
    CHECK(err.code == VELO_INVALID_ARGUMENT && strstr(err.message, cases[i].want),
          "inputs '%s': %s: '%s' lacks '%s'", cases[i].inputs, velo_status_name(err.code), err.message,
          cases[i].want);
  }
  velo_error err;
  velo_param p = str_param("inptus", "x");
  CHECK(load("cfg", 1, &p, &err) == NULL && strstr(err.message, "unknown parameter 'inptus'"),
        "unknown parameter: %s", err.message);
  velo_param q = {.struct_size = sizeof q, .key = "inputs", .type = VELO_PARAM_INT64, .value.i = 3};
  CHECK(load("cfg", 1, &q, &err) == NULL && strstr(err.message, "must be a string"),
        "inputs not a string: %s", err.message);
  q.key = "max_queue_size";
  q.value.i = 0;
  CHECK(load("cfg", 1, &q, &err) == NULL && strstr(err.message, "from 1 to"), "queue 0: %s", err.message);
  velo_param twice[2] = {str_param("inputs", "a:FP32:1"), str_param("inputs", "b:FP32:1")};
  CHECK(load("cfg", 2, twice, &err) == NULL && strstr(err.message, "given twice"), "twice: %s",
        err.message);
  velo_model_config small = {.struct_size = 8, .name = "x"};
  velo_model *m = NULL;
  velo_error_init(&err);
  CHECK(task->model_load(&host, &small, &m, &err) == VELO_INVALID_ARGUMENT && !m, "small config accepted");
  velo_host bad_host = host;
  bad_host.struct_size = 16;
  velo_model_config cfg = {.struct_size = sizeof cfg, .name = "x", .path = ""};
  CHECK(task->model_load(&bad_host, &cfg, &m, &err) == VELO_FAILED_PRECONDITION && !m,
        "small host accepted");
}

/* A request whose call is already cancelled ends with CANCELLED. */
static void test_cancelled(void) {
  velo_error err;
  velo_model *m = load("any", 0, NULL, &err);
  if (!m) return;
  static const float f = 1;
  static const int64_t s1[1] = {1};
  velo_io_tensor t = tensor("INPUT0", VELO_DATATYPE_FP32, 1, s1, &f, sizeof f);
  velo_call c;
  call_init(&c);
  atomic_store(&c.cancelled, true);
  CHECK(submit(m, &c, 1, &t, &err) == VELO_OK, "submit: %s", err.message);
  CHECK(wait_final(&c) && c.status == VELO_CANCELLED && c.n_final == 1, "cancelled call ended %s",
        velo_status_name(c.status));
  task->model_unload(m);
}

typedef struct unload_arg {
  velo_model *m;
  atomic_bool done;
} unload_arg;

static void *unload_thread(void *arg) {
  unload_arg *u = arg;
  task->model_unload(u->m);
  atomic_store(&u->done, true);
  return NULL;
}

/* The queue limit, then unloading with requests queued: the one being
 * answered finishes OK, the queued ones end UNAVAILABLE, each once. */
static void test_queue_and_unload(void) {
  velo_error err;
  velo_param p = {.struct_size = sizeof p, .key = "max_queue_size", .type = VELO_PARAM_INT64, .value.i = 3};
  velo_model *m = load("q", 1, &p, &err);
  CHECK(m != NULL, "load: %s", err.message);
  if (!m) return;
  static const float f = 1;
  static const int64_t s1[1] = {1};
  velo_io_tensor t = tensor("INPUT0", VELO_DATATYPE_FP32, 1, s1, &f, sizeof f);
  enum { N = 5 };
  velo_call c[N];
  for (int i = 0; i < N; i++) call_init(&c[i]);

  pthread_mutex_lock(&host_mu);
  in_respond = 0;
  pthread_mutex_unlock(&host_mu);
  set_gate(true);
  CHECK(submit(m, &c[0], 1, &t, &err) == VELO_OK, "first: %s", err.message);
  CHECK(wait_in_respond(1), "the worker never answered the first request");
  for (int i = 1; i <= 3; i++) CHECK(submit(m, &c[i], 1, &t, &err) == VELO_OK, "queued %d: %s", i, err.message);
  CHECK(submit(m, &c[4], 1, &t, &err) == VELO_RESOURCE_EXHAUSTED && strstr(err.message, "max_queue_size"),
        "over the limit: %s %s", velo_status_name(err.code), err.message);

  unload_arg u = {.m = m};
  atomic_init(&u.done, false);
  pthread_t th;
  pthread_create(&th, NULL, unload_thread, &u);
  usleep(20000);
  CHECK(!atomic_load(&u.done), "unload returned while a response was still being delivered");
  set_gate(false);
  pthread_join(th, NULL);
  CHECK(c[0].n_final == 1 && c[0].status == VELO_OK, "first ended %s", velo_status_name(c[0].status));
  for (int i = 1; i <= 3; i++)
    CHECK(c[i].n_final == 1 && c[i].n_responses == 1 && c[i].status == VELO_UNAVAILABLE &&
              strcmp(c[i].message, "model 'q' is being unloaded") == 0,
          "queued %d ended %s '%s' (%d responses)", i, velo_status_name(c[i].status), c[i].message,
          c[i].n_responses);
  CHECK(c[4].n_responses == 0, "refused request got %d responses", c[4].n_responses);
  for (int i = 0; i < N; i++) call_free(&c[i]);
}

typedef struct submitter {
  velo_model *m;
  int ok;
  int answered;
} submitter;

static void *submit_many(void *arg) {
  submitter *s = arg;
  enum { PER = 200 };
  static const int64_t s2[1] = {2};
  velo_call *calls = calloc(PER, sizeof *calls);
  int32_t vals[PER][2];
  velo_io_tensor t[PER];
  for (int i = 0; i < PER; i++) {
    velo_error err;
    call_init(&calls[i]);
    vals[i][0] = i;
    vals[i][1] = -i;
    t[i] = tensor("INPUT7", VELO_DATATYPE_INT32, 1, s2, vals[i], sizeof vals[i]);
    if (submit(s->m, &calls[i], 1, &t[i], &err) == VELO_OK) s->ok++;
  }
  for (int i = 0; i < PER; i++) {
    if (wait_final(&calls[i]) && calls[i].status == VELO_OK && calls[i].n_out == 1 &&
        memcmp(calls[i].out[0].data, vals[i], sizeof vals[i]) == 0)
      s->answered++;
    call_free(&calls[i]);
  }
  free(calls);
  return NULL;
}

/* Four threads submitting at once: every request answered with its own data. */
static void test_concurrent(void) {
  velo_error err;
  velo_model *m = load("any", 0, NULL, &err);
  if (!m) return;
  submitter s[4] = {{m, 0, 0}, {m, 0, 0}, {m, 0, 0}, {m, 0, 0}};
  pthread_t th[4];
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, submit_many, &s[i]);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 4; i++)
    CHECK(s[i].ok == 200 && s[i].answered == 200, "thread %d: %d accepted, %d answered", i, s[i].ok,
          s[i].answered);
  task->model_unload(m);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_identity PATH/libvelo-task-identity.so\n");
    return 2;
  }
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  CHECK(h != NULL, "dlopen %s: %s", argv[1], dlerror());
  if (!h) return check_summary("identity");
  velo_plugin_entry_fn entry = (velo_plugin_entry_fn)dlsym(h, VELO_PLUGIN_ENTRY_SYMBOL);
  CHECK(entry != NULL, "no entry symbol");
  if (!entry) return check_summary("identity");
  CHECK(entry(VELO_ABI_MAJOR + 1, 0) == NULL, "accepted a host of another major version");
  const velo_plugin_descriptor *d = entry(VELO_ABI_MAJOR, VELO_ABI_MINOR);
  CHECK(d && d->kind == VELO_PLUGIN_TASK && d->task && strcmp(d->name, "identity") == 0,
        "bad descriptor");
  if (!d || !d->task) return check_summary("identity");
  task = d->task;
  CHECK(strcmp(task->task, "identity") == 0 && task->struct_size == sizeof *task, "task table");

  test_round_trip_all_types();
  test_declared();
  test_bad_requests();
  test_bad_configs();
  test_cancelled();
  test_queue_and_unload();
  test_concurrent();
  dlclose(h);
  return check_summary("identity");
}
