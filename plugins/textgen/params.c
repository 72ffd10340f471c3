/*
 * params.c - reads and validates a text-generation request (the prompt
 * tensor "text_input" and the sampling parameters).
 *
 * Numeric parameters are accepted as INT64 or DOUBLE (Open Inference
 * Protocol clients send whichever their language makes natural); an integer
 * parameter given as a double must be integral.  Unknown parameters are
 * ignored, as the protocol lets clients send their own.
 *
 * Also here: the model config parameters of a text-generation model
 * (max_queue_size, max_active), where unknown keys are refused.
 */
#include "params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <float.h>
#include <time.h>

#include "tokenizer.h"

static velo_status param_double(const velo_param *p, double *out, velo_error *err) {
  if (p->type == VELO_PARAM_DOUBLE) *out = p->value.d;
  else if (p->type == VELO_PARAM_INT64) *out = (double)p->value.i;
  else
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "parameter %s must be a number", p->key);
  if (!isfinite(*out))
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "parameter %s must be a finite number", p->key);
  /* The sampler works in 32-bit floats: a value that would overflow to
   * infinity or underflow (to 0 or a subnormal) there would silently mean
   * something else. */
  double mag = fabs(*out);
  if (mag > FLT_MAX || (mag != 0.0 && mag < FLT_MIN))
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "parameter %s is %g, outside the range of a 32-bit float; allowed: 0 or "
                          "a magnitude from %g to %g",
                          p->key, *out, (double)FLT_MIN, (double)FLT_MAX);
  return VELO_OK;
}

static velo_status param_int(const velo_param *p, int64_t *out, velo_error *err) {
  if (p->type == VELO_PARAM_INT64) {
    *out = p->value.i;
    return VELO_OK;
  }
  if (p->type == VELO_PARAM_DOUBLE && isfinite(p->value.d) && p->value.d == floor(p->value.d) &&
      fabs(p->value.d) < 9.0e15) {
    *out = (int64_t)p->value.d;
    return VELO_OK;
  }
  return velo_error_set(err, VELO_INVALID_ARGUMENT, "parameter %s must be an integer", p->key);
}

static velo_status param_bool(const velo_param *p, bool *out, velo_error *err) {
  if (p->type == VELO_PARAM_BOOL) {
    *out = p->value.b;
    return VELO_OK;
  }
  return velo_error_set(err, VELO_INVALID_ARGUMENT, "parameter %s must be a bool", p->key);
}

void textgen_params_clear(textgen_params *p) {
  for (size_t i = 0; i < p->n_stop; i++) free(p->stop[i]);
  p->n_stop = 0;
}

static velo_status add_stop(textgen_params *p, const char *s, size_t len, velo_error *err) {
  if (len == 0)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "stop strings must be non-empty");
  if (len > TEXTGEN_MAX_STOP_BYTES)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "a stop string may have at most %d bytes, got %zu",
                          TEXTGEN_MAX_STOP_BYTES, len);
  if (p->n_stop == TEXTGEN_MAX_STOP)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "at most %d stop strings are allowed",
                          TEXTGEN_MAX_STOP);
  size_t bad = velo_utf8_validate(s, len);
  if (bad != len)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "stop string %zu is not valid UTF-8 (byte %zu)",
                          p->n_stop, bad);
  char *copy = malloc(len + 1);
  if (!copy) return velo_error_set(err, VELO_RESOURCE_EXHAUSTED, "out of memory");
  memcpy(copy, s, len);
  copy[len] = '\0';
  p->stop[p->n_stop] = copy;
  p->stop_len[p->n_stop++] = len;
  return VELO_OK;
}

static uint64_t random_seed(void) {
  uint64_t s = 0;
  if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec;
  }
  return s;
}

static velo_status parse_prompt(const velo_request *req, textgen_params *p, velo_error *err) {
  const velo_io_tensor *in = NULL;
  for (size_t i = 0; i < req->n_inputs; i++) {
    const velo_io_tensor *t = &req->inputs[i];
    if (t->name && strcmp(t->name, "text_input") == 0) {
      if (in) return velo_error_set(err, VELO_INVALID_ARGUMENT, "input text_input is given twice");
      in = t;
    } else {
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "unknown input '%s'; a text-generation model takes one input, text_input "
                            "(BYTES, shape [1])",
                            t->name ? t->name : "");
    }
  }
  if (!in)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "input text_input (BYTES, shape [1]) is missing");
  int64_t count = 1;
  for (int32_t d = 0; d < in->n_dims; d++) count *= in->shape[d];
  if (in->datatype != VELO_DATATYPE_BYTES || count != 1)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input text_input must be BYTES with one element (shape [1]), got %s with %lld "
                          "elements",
                          velo_datatype_name(in->datatype) ? velo_datatype_name(in->datatype) : "?",
                          (long long)count);
  if (in->size < 4)
    return velo_error_set(err, VELO_INVALID_ARGUMENT, "input text_input: BYTES element has no length prefix");
  const unsigned char *d = in->data;
  uint32_t len = (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
  if ((size_t)len != in->size - 4)
    return velo_error_set(err, VELO_INVALID_ARGUMENT,
                          "input text_input: element length %u does not match the %zu bytes given",
                          len, in->size - 4);
  p->prompt = (const char *)d + 4;
  p->prompt_len = len;
  return VELO_OK;
}

velo_status textgen_params_parse(const velo_request *req, textgen_params *p, velo_error *err) {
  memset(p, 0, sizeof *p);
  velo_sampler_params_default(&p->sampling);
  p->max_tokens = TEXTGEN_DEFAULT_MAX_TOKENS;
  p->sampling.temperature = 0.8f;
  p->sampling.top_k = 40;
  p->sampling.top_p = 0.95f;
  p->sampling.min_p = 0.05f;
  p->sampling.repeat_penalty = 1.0f;
  p->sampling.repeat_last_n = 64;
  p->sampling.seed = random_seed();
  velo_status st = parse_prompt(req, p, err);
  if (st != VELO_OK) return st;

  for (size_t i = 0; i < req->n_params && st == VELO_OK; i++) {
    const velo_param *q = &req->params[i];
    const char *k = q->key ? q->key : "";
    double d = 0;
    int64_t n = 0;
    if (strcmp(k, "max_tokens") == 0) {
      if ((st = param_int(q, &n, err))) break;
      if (n < 0) st = velo_error_set(err, VELO_INVALID_ARGUMENT, "max_tokens must be >= 0, got %lld", (long long)n);
      p->max_tokens = n;
    } else if (strcmp(k, "temperature") == 0) {
      if ((st = param_double(q, &d, err))) break;
      if (d < 0) st = velo_error_set(err, VELO_INVALID_ARGUMENT, "temperature must be >= 0, got %g", d);
      p->sampling.temperature = (float)d;
    } else if (strcmp(k, "top_k") == 0) {
      if ((st = param_int(q, &n, err))) break;
      if (n < 0 || n > INT32_MAX)
        st = velo_error_set(err, VELO_INVALID_ARGUMENT, "top_k must be in 0..2147483647 (0 = off), got %lld", (long long)n);
      p->sampling.top_k = (int32_t)n;
    } else if (strcmp(k, "top_p") == 0) {
      if ((st = param_double(q, &d, err))) break;
      if (!(d > 0 && d <= 1)) st = velo_error_set(err, VELO_INVALID_ARGUMENT, "top_p must be in (0, 1], got %g", d);
      p->sampling.top_p = (float)d;
    } else if (strcmp(k, "min_p") == 0) {
      if ((st = param_double(q, &d, err))) break;
      if (!(d >= 0 && d <= 1)) st = velo_error_set(err, VELO_INVALID_ARGUMENT, "min_p must be in [0, 1], got %g", d);
      p->sampling.min_p = (float)d;
    } else if (strcmp(k, "repeat_penalty") == 0) {
      if ((st = param_double(q, &d, err))) break;
      if (!(d > 0)) st = velo_error_set(err, VELO_INVALID_ARGUMENT, "repeat_penalty must be > 0 (1 = off), got %g", d);
      p->sampling.repeat_penalty = (float)d;
    } else if (strcmp(k, "repeat_last_n") == 0) {
      if ((st = param_int(q, &n, err))) break;
      if (n < 0 || n > INT32_MAX)
        st = velo_error_set(err, VELO_INVALID_ARGUMENT, "repeat_last_n must be in 0..2147483647, got %lld", (long long)n);
      p->sampling.repeat_last_n = (int32_t)n;
    } else if (strcmp(k, "seed") == 0) {
      if ((st = param_int(q, &n, err))) break;
      p->sampling.seed = (uint64_t)n;
    } else if (strcmp(k, "ignore_eos") == 0) {
      st = param_bool(q, &p->ignore_eos, err);
    } else if (strcmp(k, "priority") == 0) {
      st = param_int(q, &p->priority, err);
    } else if (strcmp(k, "stop") == 0) {
      if (q->type != VELO_PARAM_STRING)
        st = velo_error_set(err, VELO_INVALID_ARGUMENT, "parameter stop must be a string");
      else
        st = add_stop(p, q->value.s.ptr, q->value.s.len, err);
    }
  }
  if (st != VELO_OK) textgen_params_clear(p);
  return st;
}

/* A model config integer: INT64, or a string holding a decimal integer
 * (optionally signed, no spaces).  Returns false for anything else. */
static bool config_int(const velo_param *p, int64_t *out) {
  if (p->type == VELO_PARAM_INT64) {
    *out = p->value.i;
    return true;
  }
  if (p->type != VELO_PARAM_STRING || !p->value.s.ptr) return false;
  const char *s = p->value.s.ptr;
  size_t len = p->value.s.len, i = 0;
  bool neg = false;
  if (i < len && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
  if (i == len) return false;
  int64_t v = 0;
  for (; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    if (v > (INT64_MAX - (s[i] - '0')) / 10) return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = neg ? -v : v;
  return true;
}

velo_status textgen_model_params_parse(const char *model, const velo_param *params, size_t n_params,
                                       textgen_model_params *mp, velo_error *err) {
  mp->max_queue = TEXTGEN_DEFAULT_MAX_QUEUE;
  mp->max_active = TEXTGEN_DEFAULT_MAX_ACTIVE;
  bool seen_queue = false, seen_active = false;
  for (size_t i = 0; i < n_params; i++) {
    const velo_param *p = &params[i];
    if (p->struct_size < sizeof *p || !p->key)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': parameter %zu is malformed", model, i);
    bool queue = strcmp(p->key, "max_queue_size") == 0;
    bool active = strcmp(p->key, "max_active") == 0;
    if (!queue && !active)
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': unknown parameter '%.64s' (the text-generation task takes "
                            "'max_queue_size' and 'max_active')",
                            model, p->key);
    bool *seen = queue ? &seen_queue : &seen_active;
    if (*seen)
      return velo_error_set(err, VELO_INVALID_ARGUMENT, "model '%s': parameter '%s' is given twice",
                            model, p->key);
    *seen = true;
    int64_t lo = queue ? 0 : 1, hi = queue ? TEXTGEN_MAX_MAX_QUEUE : TEXTGEN_MAX_MAX_ACTIVE;
    int64_t v;
    if (!config_int(p, &v) || v < lo || v > hi) {
      char shown[40];
      if (p->type == VELO_PARAM_INT64) snprintf(shown, sizeof shown, "%lld", (long long)p->value.i);
      else if (p->type == VELO_PARAM_STRING && p->value.s.ptr)
        snprintf(shown, sizeof shown, "\"%.*s\"", (int)(p->value.s.len > 32 ? 32 : p->value.s.len),
                 p->value.s.ptr);
      else snprintf(shown, sizeof shown, "a %s", p->type == VELO_PARAM_BOOL ? "bool" : "non-integer");
      return velo_error_set(err, VELO_INVALID_ARGUMENT,
                            "model '%s': parameter '%s' is %s; it must be an integer from %lld to %lld",
                            model, p->key, shown, (long long)lo, (long long)hi);
    }
    if (queue) mp->max_queue = (size_t)v;
    else mp->max_active = (size_t)v;
  }
  return VELO_OK;
}
