/*
 * params.h - a text-generation request as the engine needs it: the prompt
 * and the sampling settings, read and validated from a velo_request
 * (named tensors + parameters; see docs/protocol.md for the names).
 */
#ifndef VELO_TEXTGEN_PARAMS_H
#define VELO_TEXTGEN_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sampling.h"
#include "velo/task.h"

#define TEXTGEN_MAX_STOP 16        /* stop strings per request */
#define TEXTGEN_MAX_STOP_BYTES 256 /* bytes per stop string */
#define TEXTGEN_DEFAULT_MAX_TOKENS 128

typedef struct textgen_params {
  const char *prompt;  /* borrowed from the request: UTF-8 not yet checked */
  size_t prompt_len;
  int64_t max_tokens;  /* >= 0 */
  bool ignore_eos;
  int64_t priority;    /* admission order: higher first, equal FIFO; default 0 */
  velo_sampler_params sampling;
  size_t n_stop;
  char *stop[TEXTGEN_MAX_STOP]; /* owned copies, NUL-terminated */
  size_t stop_len[TEXTGEN_MAX_STOP];
} textgen_params;

/* Reads and validates req into *p (which owns copies of the stop strings;
 * free them with textgen_params_clear).  Errors are INVALID_ARGUMENT with a
 * message naming the input or parameter, the value, and what is allowed.
 * On failure *p holds nothing that needs freeing. */
velo_status textgen_params_parse(const velo_request *req, textgen_params *p, velo_error *err);
void textgen_params_clear(textgen_params *p);

/* Model config parameters (velo_model_config.params) and their limits. */
#define TEXTGEN_DEFAULT_MAX_QUEUE 64   /* requests waiting for admission */
#define TEXTGEN_MAX_MAX_QUEUE 1000000
#define TEXTGEN_DEFAULT_MAX_ACTIVE 16  /* sequences batched at once */
#define TEXTGEN_MAX_MAX_ACTIVE 256

typedef struct textgen_model_params {
  size_t max_queue;  /* 0..TEXTGEN_MAX_MAX_QUEUE: 0 = no waiting beyond the running ones */
  size_t max_active; /* 1..TEXTGEN_MAX_MAX_ACTIVE */
} textgen_model_params;

/* Reads the model config parameters of a text-generation model (model is
 * its name, for messages) into *mp, defaults first.  Known keys:
 * max_queue_size and max_active, each an INT64 or a string holding a
 * decimal integer.  An unknown key, a key given twice, a value of another
 * type or out of range is INVALID_ARGUMENT naming the model, the key, the
 * value and what is allowed.  Borrows nothing; thread-safe. */
velo_status textgen_model_params_parse(const char *model, const velo_param *params, size_t n_params,
                                       textgen_model_params *mp, velo_error *err);

#endif
