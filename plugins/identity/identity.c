/*
 * identity.c - the "identity" task plugin (libvelo-task-identity.so): every
 * input tensor of a request comes back unchanged, as one final response, in
 * an output tensor with the same datatype, shape and bytes.  It is the
 * smallest task there is: proof that the task ABI (velo/task.h) is not
 * text-specific, and the model that protocol tests use for tensors of every
 * datatype of the Open Inference Protocol (BOOL ... FP64, FP16, BF16, BYTES).
 *
 * Output names: an input called INPUT<digits> (e.g. INPUT0) is answered as
 * OUTPUT<digits> (OUTPUT0), as Triton's identity models do; any other name
 * is answered under the same name.  Two inputs that would give the same
 * output name (INPUT0 and OUTPUT0) are refused.
 *
 * Model configuration (velo_model_config.params; no model file is read, so
 * path may be ""):
 *   inputs          STRING, optional: the inputs the model declares, as
 *                   "NAME:DATATYPE:DIMS;..." with DIMS a comma-separated list
 *                   of sizes, -1 for a variable one, e.g.
 *                   "INPUT0:FP32:-1,4;INPUT1:BYTES:-1".  Every declared input
 *                   is required; a request with an undeclared input, another
 *                   datatype, or another shape is INVALID_ARGUMENT.  Without
 *                   it the model declares nothing and accepts any inputs.
 *   max_queue_size  INT64, optional, 1..1000000 (default 1024): requests
 *                   waiting beyond that are refused with RESOURCE_EXHAUSTED.
 * Any other parameter is INVALID_ARGUMENT (a typo must not pass silently).
 *
 * Threads: submit() validates the request completely (it trusts nothing the
 * host passes) and queues it; one worker thread per model answers the
 * queue in order, so respond() is never called from inside submit().  A
 * request whose call was cancelled by the time the worker reaches it ends
 * with CANCELLED.  model_unload() ends every request still queued with
 * UNAVAILABLE "model 'x' is being unloaded", lets the one being answered
 * finish, joins the worker and frees everything.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "velo/plugin.h"

#define SRC "identity"
#define DEFAULT_MAX_QUEUE 1024
#define MAX_MAX_QUEUE 1000000
#define MAX_NAME_BYTES 256 /* longest declared input name */
#define SHOW_NAME_BYTES 64 /* longest part of a client's name put into a message */

/* One accepted request, waiting for the worker. */
typedef struct job {
  struct job *next;
  velo_call *call;
  size_t n;                     /* inputs = outputs */
  const velo_io_tensor *inputs; /* borrowed from the host until the final response */
  velo_io_tensor *outputs;      /* n entries, same data as inputs, names below */
  char *names;                  /* the output names, NUL-separated */
} job;

struct velo_model {
  const velo_host *host; /* borrowed: valid while the plugin is loaded */
  char *name;
  size_t n_decl;          /* declared inputs (0: accept any) */
  velo_io_desc *inputs;   /* n_decl entries, names owned */
  velo_io_desc *outputs;  /* n_decl entries mirroring inputs, names owned */
  size_t max_queue;

  pthread_mutex_t mu; /* guards everything below */
  pthread_cond_t cv;
  job *head, *tail;
  size_t queued;
  bool stopping; /* model_unload has begun */
  pthread_t worker;
};

/* ------------------------------------------------------------------ */
/* Names                                                               */
/* ------------------------------------------------------------------ */

/* Copies at most SHOW_NAME_BYTES bytes of a client's name into out (for an
 * error message: the server escapes what is not printable), with "..." when
 * cut.  out must hold SHOW_NAME_BYTES + 4 bytes.  Returns out. */
static const char *show(const char *name, char *out) {
  size_t len = name ? strlen(name) : 0;
  if (len <= SHOW_NAME_BYTES) {
    memcpy(out, name ? name : "", len + 1);
  } else {
    memcpy(out, name, SHOW_NAME_BYTES);
    memcpy(out + SHOW_NAME_BYTES, "...", 4);
  }
  return out;
}

/* True for INPUT followed by one or more decimal digits and nothing else. */
static bool is_input_n(const char *name) {
  if (strncmp(name, "INPUT", 5) != 0 || name[5] == '\0') return false;
  for (const char *p = name + 5; *p; p++)
    if (*p < '0' || *p > '9') return false;
  return true;
}

/* The output name of input name written to out (cap >= strlen(name) + 2):
 * INPUT<digits> gives OUTPUT<digits>, any other name itself.  Returns the
 * length written, without the NUL.  Pure. */
static size_t output_name(const char *name, char *out, size_t cap) {
  int n = is_input_n(name) ? snprintf(out, cap, "OUTPUT%s", name + 5) : snprintf(out, cap, "%s", name);
  return n > 0 ? (size_t)n : 0;
}

/* ------------------------------------------------------------------ */
/* Declared inputs ("inputs" parameter)                                */
/* ------------------------------------------------------------------ */

/* The datatype spelled s (protocol spelling), or INVALID. */
static velo_datatype datatype_from_name(const char *s) {
#define DT_MATCH_(name, size) \
  if (strcmp(s, #name) == 0) return VELO_DATATYPE_##name;
  VELO_DATATYPE_MAP(DT_MATCH_)
#undef DT_MATCH_
  return VELO_DATATYPE_INVALID;
}

/* Characters a declared input name may use. */
static bool name_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.';
}

/* Writes "[-1,4]" for shape into out. */
static void format_shape(int32_t n_dims, const int64_t *shape, char *out, size_t cap) {
  size_t used = 0;
  int w = snprintf(out, cap, "[");
  if (w > 0) used = (size_t)w;
  for (int32_t i = 0; i < n_dims && used < cap; i++) {
    w = snprintf(out + used, cap - used, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (w > 0) used += (size_t)w;
  }
  if (used < cap) snprintf(out + used, cap - used, "]");
}

/* Parses one "NAME:DATATYPE:DIMS" entry (NUL-terminated, modified in place)
 * into *d (d->name is malloc'd on success).  Errors: INVALID_ARGUMENT naming
 * the entry and what is allowed; RESOURCE_EXHAUSTED. */
static velo_status parse_decl_entry(const char *model, char *entry, size_t index, velo_io_desc *d,
                                    velo_error *err) {
  static const char *const syntax =
      "expected NAME:DATATYPE:DIMS, e.g. INPUT0:FP32:-1,4 (DIMS: sizes separated by commas, "
      "-1 for a variable size; entries separated by ';')";
  char *c1 = strchr(entry, ':');
  char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
  if (!c1 || !c2 || strchr(c2 + 1, ':'))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': parameter 'inputs', entry %zu '%s': %s",
                          model, index + 1, entry, syntax);
  *c1 = '\0';
  *c2 = '\0';
  const char *name = entry, *dtype = c1 + 1;
  char *dims = c2 + 1;
  size_t name_len = strlen(name);
  if (name_len == 0 || name_len > MAX_NAME_BYTES)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': parameter 'inputs', entry %zu: the name must have 1 to %d "
                          "characters, got %zu",
                          model, index + 1, MAX_NAME_BYTES, name_len);
  for (const char *p = name; *p; p++)
    if (!name_char_ok(*p))
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': parameter 'inputs', entry %zu: input name '%s' may only "
                            "use letters, digits, '_', '-' and '.'",
                            model, index + 1, name);
  velo_datatype dt = datatype_from_name(dtype);
  if (dt == VELO_DATATYPE_INVALID)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': parameter 'inputs', input '%s': unknown datatype '%s' "
                          "(allowed: BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, "
                          "INT64, FP16, FP32, FP64, BYTES, BF16)",
                          model, name, dtype);
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  d->datatype = dt;
  if (*dims) {
    char *p = dims;
    for (;;) {
      char *end;
      if (d->n_dims == VELO_MAX_IO_DIMS)
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "model '%s': parameter 'inputs', input '%s': more than %d dimensions",
                              model, name, VELO_MAX_IO_DIMS);
      errno = 0;
      long long v = strtoll(p, &end, 10);
      bool starts_ok = *p == '-' || (*p >= '0' && *p <= '9'); /* no sign '+', no spaces */
      if (!starts_ok || end == p || errno || v < -1 || (*end != ',' && *end != '\0'))
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "model '%s': parameter 'inputs', input '%s': bad dimension in '%s': "
                              "each must be -1 (variable) or an integer >= 0",
                              model, name, dims);
      d->shape[d->n_dims++] = v;
      if (*end == '\0') break;
      p = end + 1;
    }
  }
  d->name = strdup(name);
  if (!d->name) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  return VELO_OK;
}

/* Parses the "inputs" parameter (s[0..len), not NUL-terminated) into
 * m->inputs and mirrors it into m->outputs.  Errors as parse_decl_entry,
 * plus duplicate names and colliding output names; m's arrays are then
 * freed by the caller (model_free). */
static velo_status parse_decl(velo_model *m, const char *s, size_t len, velo_error *err) {
  if (len == 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': parameter 'inputs' is empty: leave it out to accept any "
                          "inputs, or declare them as NAME:DATATYPE:DIMS;...",
                          m->name);
  if (memchr(s, '\0', len))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': parameter 'inputs' contains a NUL byte", m->name);
  char *text = strndup(s, len);
  if (!text) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  size_t n = 1;
  for (size_t i = 0; i < len; i++) n += text[i] == ';';
  m->inputs = calloc(n, sizeof *m->inputs);
  m->outputs = calloc(n, sizeof *m->outputs);
  velo_status st = VELO_OK;
  if (!m->inputs || !m->outputs) st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  char *entry = text;
  for (size_t i = 0; st == VELO_OK && i < n; i++) {
    char *semi = strchr(entry, ';');
    if (semi) *semi = '\0';
    if (*entry == '\0') {
      st = velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "model '%s': parameter 'inputs', entry %zu is empty (no ';' at the "
                          "start, at the end or twice in a row)",
                          m->name, i + 1);
      break;
    }
    st = parse_decl_entry(m->name, entry, i, &m->inputs[i], err);
    if (st != VELO_OK) break;
    m->n_decl++;
    entry = semi ? semi + 1 : entry + strlen(entry);
  }
  free(text);
  if (st != VELO_OK) return st;

  /* Outputs mirror inputs; names must stay distinct. */
  for (size_t i = 0; i < m->n_decl; i++) {
    char out[MAX_NAME_BYTES + 8];
    output_name(m->inputs[i].name, out, sizeof out);
    m->outputs[i] = m->inputs[i];
    m->outputs[i].name = strdup(out);
    if (!m->outputs[i].name) {
      m->n_decl = i; /* outputs[i..] own nothing */
      for (size_t k = i; k < n; k++) free((char *)m->inputs[k].name), m->inputs[k].name = NULL;
      return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
    }
  }
  for (size_t i = 0; i < m->n_decl; i++)
    for (size_t k = 0; k < i; k++) {
      if (strcmp(m->inputs[i].name, m->inputs[k].name) == 0)
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "model '%s': parameter 'inputs' declares input '%s' twice", m->name,
                              m->inputs[i].name);
      if (strcmp(m->outputs[i].name, m->outputs[k].name) == 0)
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "model '%s': parameter 'inputs': inputs '%s' and '%s' would both be "
                              "returned as output '%s' (INPUTn is answered as OUTPUTn)",
                              m->name, m->inputs[k].name, m->inputs[i].name, m->outputs[i].name);
    }
  return VELO_OK;
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */
/* ------------------------------------------------------------------ */

/* Checks one request tensor on its own: name, datatype, shape, and that
 * size matches shape x datatype (for BYTES: that the length prefixes walk
 * exactly to the end, one per element).  INVALID_ARGUMENT naming the
 * input and what was expected. */
static velo_status check_tensor(const velo_io_tensor *t, size_t index, velo_error *err) {
  char shown[SHOW_NAME_BYTES + 4];
  if (t->struct_size < sizeof *t)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "input %zu: struct_size %u < %zu expected",
                          index, (unsigned)t->struct_size, sizeof *t);
  if (!t->name || !t->name[0])
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "input %zu has no name", index);
  const char *name = show(t->name, shown);
  if (!velo_datatype_name(t->datatype))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': datatype %d is not a datatype of the protocol (BOOL, UINT8, "
                          "UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, "
                          "BYTES, BF16)",
                          name, (int)t->datatype);
  if (t->n_dims < 0 || t->n_dims > VELO_MAX_IO_DIMS)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "input '%s': %d dimensions (allowed: 0 to %d)",
                          name, (int)t->n_dims, VELO_MAX_IO_DIMS);
  if (t->n_dims > 0 && !t->shape)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "input '%s': no shape", name);
  if (t->size > 0 && !t->data)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "input '%s': %zu bytes but no data", name,
                          t->size);
  /* Element count, with overflow checks. */
  uint64_t count = 1;
  bool overflow = false;
  for (int32_t i = 0; i < t->n_dims; i++) {
    int64_t d = t->shape[i];
    if (d < 0)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': dimension %d is %lld (sizes must be >= 0)", name, (int)i,
                            (long long)d);
    if (d == 0) count = 0, overflow = false;
    if (count != 0 && (uint64_t)d > UINT64_MAX / count) overflow = true;
    else count *= (uint64_t)d;
  }
  if (overflow)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "input '%s': the shape's element count overflows",
                          name);
  size_t esize = velo_datatype_size(t->datatype);
  if (t->datatype != VELO_DATATYPE_BYTES) {
    if (count > SIZE_MAX / esize || count * esize != t->size)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': %zu bytes of data, but shape x %s needs %llu x %zu bytes",
                            name, t->size, velo_datatype_name(t->datatype),
                            (unsigned long long)count, esize);
    return VELO_OK;
  }
  /* BYTES: (uint32 little-endian length, bytes) per element. */
  const unsigned char *p = t->data;
  size_t off = 0;
  for (uint64_t e = 0; e < count; e++) {
    if (t->size - off < 4)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': BYTES element %llu has no complete 4-byte length prefix "
                            "(%zu bytes left, shape needs %llu elements)",
                            name, (unsigned long long)e, t->size - off, (unsigned long long)count);
    uint32_t len = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
                   (uint32_t)p[off + 3] << 24;
    off += 4;
    if (len > t->size - off)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s': BYTES element %llu claims %u bytes but only %zu are left",
                            name, (unsigned long long)e, (unsigned)len, t->size - off);
    off += len;
  }
  if (off != t->size)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s': %zu bytes after the %llu BYTES element(s) the shape holds",
                          name, t->size - off, (unsigned long long)count);
  return VELO_OK;
}

/* Checks t against the declared input d (datatype, rank, fixed sizes). */
static velo_status check_declared(const velo_model *m, const velo_io_tensor *t,
                                  const velo_io_desc *d, velo_error *err) {
  char got[256], want[256];
  if (t->datatype != d->datatype)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s' has datatype %s, model '%s' expects %s", d->name,
                          velo_datatype_name(t->datatype), m->name, velo_datatype_name(d->datatype));
  bool ok = t->n_dims == d->n_dims;
  for (int32_t i = 0; ok && i < d->n_dims; i++) ok = d->shape[i] < 0 || d->shape[i] == t->shape[i];
  if (!ok) {
    format_shape(t->n_dims, t->shape, got, sizeof got);
    format_shape(d->n_dims, d->shape, want, sizeof want);
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input '%s' has shape %s, model '%s' expects %s (-1: any size)", d->name,
                          got, m->name, want);
  }
  return VELO_OK;
}

/* Lists the declared inputs as "INPUT0 (FP32 [-1,4]), ..." into out. */
static void list_decl(const velo_model *m, char *out, size_t cap) {
  size_t used = 0;
  out[0] = '\0';
  for (size_t i = 0; i < m->n_decl && used < cap; i++) {
    char shape[128];
    format_shape(m->inputs[i].n_dims, m->inputs[i].shape, shape, sizeof shape);
    int w = snprintf(out + used, cap - used, "%s%s (%s %s)", i ? ", " : "", m->inputs[i].name,
                     velo_datatype_name(m->inputs[i].datatype), shape);
    if (w > 0) used += (size_t)w;
  }
}

/* Validates a whole request: every tensor, duplicates, output-name
 * collisions and, with declared inputs, names, datatypes, shapes and
 * completeness. */
static velo_status check_request(const velo_model *m, const velo_request *req, velo_error *err) {
  char shown[SHOW_NAME_BYTES + 4], shown2[SHOW_NAME_BYTES + 4];
  if (req->n_inputs == 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "the request has no inputs: model '%s' returns its inputs, so it needs "
                          "at least one",
                          m->name);
  if (!req->inputs)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "the request has %zu inputs but no array",
                          req->n_inputs);
  for (size_t i = 0; i < req->n_inputs; i++) {
    velo_status st = check_tensor(&req->inputs[i], i, err);
    if (st != VELO_OK) return st;
  }
  for (size_t i = 0; i < req->n_inputs; i++)
    for (size_t k = 0; k < i; k++)
      if (strcmp(req->inputs[i].name, req->inputs[k].name) == 0)
        return velo_error_set(err, VELO_INVALID_ARGUMENT, "input '%s' is given twice",
                              show(req->inputs[i].name, shown));
  if (m->n_decl == 0) {
    /* Any inputs, but their output names must be distinct: INPUT0 and
     * OUTPUT0 would both come back as OUTPUT0. */
    for (size_t i = 0; i < req->n_inputs; i++) {
      const char *a = req->inputs[i].name;
      if (!is_input_n(a)) continue;
      for (size_t k = 0; k < req->n_inputs; k++) {
        const char *b = req->inputs[k].name;
        if (strncmp(b, "OUTPUT", 6) == 0 && strcmp(b + 6, a + 5) == 0)
          return velo_error_set(err, VELO_INVALID_ARGUMENT,
                                "inputs '%s' and '%s' would both be returned as output '%s' "
                                "(INPUTn is answered as OUTPUTn): rename one",
                                show(a, shown), show(b, shown2), show(b, shown2));
      }
    }
    return VELO_OK;
  }
  for (size_t i = 0; i < req->n_inputs; i++) {
    const velo_io_desc *d = NULL;
    for (size_t k = 0; k < m->n_decl && !d; k++)
      if (strcmp(m->inputs[k].name, req->inputs[i].name) == 0) d = &m->inputs[k];
    if (!d) {
      char list[1024];
      list_decl(m, list, sizeof list);
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "input '%s' is not an input of model '%s'; its inputs are: %s",
                            show(req->inputs[i].name, shown), m->name, list);
    }
    velo_status st = check_declared(m, &req->inputs[i], d, err);
    if (st != VELO_OK) return st;
  }
  for (size_t k = 0; k < m->n_decl; k++) {
    bool found = false;
    for (size_t i = 0; i < req->n_inputs && !found; i++)
      found = strcmp(m->inputs[k].name, req->inputs[i].name) == 0;
    if (!found)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "input '%s' of model '%s' is missing",
                            m->inputs[k].name, m->name);
  }
  return VELO_OK;
}

/* A job for a validated request: outputs pointing at the inputs' data
 * under their output names.  NULL when out of memory. */
static job *job_new(const velo_request *req) {
  size_t names_len = 0;
  for (size_t i = 0; i < req->n_inputs; i++) names_len += strlen(req->inputs[i].name) + 2;
  job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->call = req->call;
  j->n = req->n_inputs;
  j->inputs = req->inputs;
  j->outputs = calloc(j->n, sizeof *j->outputs);
  j->names = malloc(names_len);
  if (!j->outputs || !j->names) {
    free(j->outputs);
    free(j->names);
    free(j);
    return NULL;
  }
  char *p = j->names;
  for (size_t i = 0; i < j->n; i++) {
    const velo_io_tensor *in = &req->inputs[i];
    size_t w = output_name(in->name, p, names_len - (size_t)(p - j->names));
    j->outputs[i] = *in;
    j->outputs[i].struct_size = sizeof j->outputs[i];
    j->outputs[i].name = p;
    p += w + 1;
  }
  return j;
}

static void job_free(job *j) {
  free(j->outputs);
  free(j->names);
  free(j);
}

/* Sends the final response of j: its outputs, or status with message. */
static void job_finish(velo_model *m, job *j, velo_status status, const char *message) {
  velo_response resp;
  memset(&resp, 0, sizeof resp);
  resp.struct_size = sizeof resp;
  resp.final = true;
  resp.status = status;
  if (status == VELO_OK) {
    resp.n_outputs = j->n;
    resp.outputs = j->outputs;
  } else {
    resp.error_message = message;
  }
  m->host->respond(j->call, &resp); /* CANCELLED (client gone) needs nothing more */
  job_free(j);
}

/* The worker: answers jobs in order until model_unload, then ends the
 * ones still queued with UNAVAILABLE. */
static void *worker_main(void *arg) {
  velo_model *m = arg;
  for (;;) {
    pthread_mutex_lock(&m->mu);
    while (!m->head && !m->stopping) pthread_cond_wait(&m->cv, &m->mu);
    if (m->stopping) {
      job *rest = m->head;
      m->head = m->tail = NULL;
      m->queued = 0;
      pthread_mutex_unlock(&m->mu);
      char msg[VELO_ERROR_MESSAGE_MAX];
      snprintf(msg, sizeof msg, "model '%s' is being unloaded", m->name);
      while (rest) {
        job *next = rest->next;
        job_finish(m, rest, VELO_UNAVAILABLE, msg);
        rest = next;
      }
      return NULL;
    }
    job *j = m->head;
    m->head = j->next;
    if (!m->head) m->tail = NULL;
    m->queued--;
    pthread_mutex_unlock(&m->mu);
    if (m->host->call_cancelled(j->call))
      job_finish(m, j, VELO_CANCELLED, "the request was cancelled");
    else
      job_finish(m, j, VELO_OK, NULL);
  }
}

/* ------------------------------------------------------------------ */
/* The task table                                                      */
/* ------------------------------------------------------------------ */

/* Frees a model that has no worker running (or never had one). */
static void model_free(velo_model *m) {
  for (size_t i = 0; m->inputs && i < m->n_decl; i++) free((char *)m->inputs[i].name);
  for (size_t i = 0; m->outputs && i < m->n_decl; i++) free((char *)m->outputs[i].name);
  free(m->inputs);
  free(m->outputs);
  free(m->name);
  free(m);
}

/* Reads the model's parameters (see the top of the file). */
static velo_status read_params(velo_model *m, const velo_model_config *cfg, velo_error *err) {
  if (cfg->n_params && !cfg->params)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': %zu parameters but no array",
                          m->name, cfg->n_params);
  bool seen_inputs = false, seen_queue = false;
  for (size_t i = 0; i < cfg->n_params; i++) {
    const velo_param *p = &cfg->params[i];
    if (p->struct_size < sizeof *p || !p->key)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': parameter %zu is malformed",
                            m->name, i);
    if (strcmp(p->key, "inputs") == 0) {
      if (seen_inputs)
        return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': parameter 'inputs' is given twice",
                              m->name);
      seen_inputs = true;
      if (p->type != VELO_PARAM_STRING || (!p->value.s.ptr && p->value.s.len))
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "model '%s': parameter 'inputs' must be a string like "
                              "\"INPUT0:FP32:-1,4;INPUT1:BYTES:-1\"",
                              m->name);
      velo_status st = parse_decl(m, p->value.s.ptr, p->value.s.len, err);
      if (st != VELO_OK) return st;
    } else if (strcmp(p->key, "max_queue_size") == 0) {
      if (seen_queue)
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "model '%s': parameter 'max_queue_size' is given twice", m->name);
      seen_queue = true;
      if (p->type != VELO_PARAM_INT64 || p->value.i < 1 || p->value.i > MAX_MAX_QUEUE)
        return velo_error_set(err, VELO_INVALID_ARGUMENT,
                              "model '%s': parameter 'max_queue_size' must be an integer from 1 "
                              "to %d",
                              m->name, MAX_MAX_QUEUE);
      m->max_queue = (size_t)p->value.i;
    } else {
      char shown[SHOW_NAME_BYTES + 4];
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': unknown parameter '%s' (the identity task takes "
                            "'inputs' and 'max_queue_size')",
                            m->name, show(p->key, shown));
    }
  }
  return VELO_OK;
}

static velo_status identity_model_load(const velo_host *host, const velo_model_config *cfg,
                                       velo_model **out, velo_error *err) {
  if (!out) return velo_error_set(err, VELO_INVALID_ARGUMENT, "identity: no place for the model");
  *out = NULL;
  if (!host || host->struct_size < sizeof *host || !host->respond || !host->call_cancelled)
    return velo_error_set(err, VELO_FAILED_PRECONDITION,
                          "identity: the host table lacks respond/call_cancelled");
  if (!cfg || cfg->struct_size < sizeof *cfg)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "identity: model config missing or too small");
  if (!cfg->name || !cfg->name[0])
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "identity: the model has no name");
  velo_model *m = calloc(1, sizeof *m);
  if (!m || !(m->name = strdup(cfg->name))) {
    free(m);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  }
  m->host = host;
  m->max_queue = DEFAULT_MAX_QUEUE;
  velo_status st = read_params(m, cfg, err);
  if (st != VELO_OK) {
    model_free(m);
    return st;
  }
  pthread_mutex_init(&m->mu, NULL);
  pthread_cond_init(&m->cv, NULL);
  int rc = pthread_create(&m->worker, NULL, worker_main, m);
  if (rc != 0) {
    pthread_cond_destroy(&m->cv);
    pthread_mutex_destroy(&m->mu);
    model_free(m);
    return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "identity: cannot start a worker thread: %s",
                          strerror(rc));
  }
  if (cfg->path && cfg->path[0])
    host->log(VELO_LOG_DEBUG, SRC, "model '%s': the identity task reads no file; %s is ignored",
              m->name, cfg->path);
  *out = m;
  return VELO_OK;
}

static void identity_model_unload(velo_model *m) {
  if (!m) return;
  pthread_mutex_lock(&m->mu);
  m->stopping = true;
  pthread_cond_broadcast(&m->cv);
  pthread_mutex_unlock(&m->mu);
  pthread_join(m->worker, NULL);
  pthread_cond_destroy(&m->cv);
  pthread_mutex_destroy(&m->mu);
  model_free(m);
}

static velo_status identity_model_metadata(velo_model *m, velo_model_metadata *out,
                                           velo_error *err) {
  if (!m || !out || out->struct_size < sizeof *out)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "identity: metadata struct missing or too small");
  out->platform = "velo_identity";
  out->architecture = "";
  out->context_length = 0;
  out->n_inputs = m->n_decl;
  out->inputs = m->inputs;
  out->n_outputs = m->n_decl;
  out->outputs = m->outputs;
  return VELO_OK;
}

static velo_status identity_submit(velo_model *m, const velo_request *req, velo_error *err) {
  if (!m || !req || req->struct_size < sizeof *req)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "identity: request missing or too small");
  if (!req->call) return velo_error_set(err, VELO_INVALID_ARGUMENT, "identity: request without a call");
  velo_status st = check_request(m, req, err);
  if (st != VELO_OK) return st;
  job *j = job_new(req);
  if (!j) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  pthread_mutex_lock(&m->mu);
  if (m->stopping) {
    st = velo_error_set(err, VELO_UNAVAILABLE, "model '%s' is being unloaded", m->name);
  } else if (m->queued >= m->max_queue) {
    st = velo_error_set(err, VELO_RESOURCE_EXHAUSTED,
                        "model '%s' has %zu requests waiting, its max_queue_size: try again later",
                        m->name, m->queued);
  } else {
    if (m->tail) m->tail->next = j;
    else m->head = j;
    m->tail = j;
    m->queued++;
    pthread_cond_signal(&m->cv);
  }
  pthread_mutex_unlock(&m->mu);
  if (st != VELO_OK) job_free(j);
  return st;
}

static const velo_task_iface task_iface = {
    .struct_size = sizeof(velo_task_iface),
    .task = "identity",
    .model_load = identity_model_load,
    .model_unload = identity_model_unload,
    .model_metadata = identity_model_metadata,
    .submit = identity_submit,
    .get_extension = NULL,
};

static const velo_plugin_descriptor descriptor = {
    .struct_size = sizeof(velo_plugin_descriptor),
    .abi_major = VELO_ABI_MAJOR,
    .abi_minor = VELO_ABI_MINOR,
    .name = "identity",
    .kind = VELO_PLUGIN_TASK,
    .version = "0.1.0",
    .description = "Identity: returns every input tensor unchanged (any datatype, BYTES included)",
    .task = &task_iface,
};

/* The plugin's one exported symbol (velo/plugin.h): the descriptor for a
 * host of the same major ABI version, NULL otherwise. */
VELO_PLUGIN_EXPORT const velo_plugin_descriptor *velo_plugin_entry(uint32_t host_abi_major,
                                                                   uint32_t host_abi_minor) {
  (void)host_abi_minor;
  return host_abi_major == VELO_ABI_MAJOR ? &descriptor : NULL;
}
