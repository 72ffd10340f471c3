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

#endif
