/*
 * textgen.h - the text-generation task plugin's model: GGUF file, tokenizer,
 * llama weights on the backend, and the serving engine that runs requests.
 *
 * Requests are validated and tokenized in submit() on the caller's thread,
 * then queued (bounded by the model config's max_queue_size, ordered by
 * request priority); one engine thread per model batches up to max_active
 * (model config, default TEXTGEN_DEFAULT_MAX_ACTIVE) sequences into one
 * forward pass per step over a paged KV cache with prefix caching (see
 * engine.c and docs/design.md section 5).
 */
#ifndef VELO_TEXTGEN_TEXTGEN_H
#define VELO_TEXTGEN_TEXTGEN_H

#include "llama.h"
#include "params.h"
#include "tokenizer.h"
#include "velo/plugin.h"
#include "velo/text.h"

extern const velo_host *textgen_host;

velo_status textgen_model_load(const velo_host *host, const velo_model_config *cfg, velo_model **out,
                               velo_error *err);
void textgen_model_unload(velo_model *model);
velo_status textgen_model_metadata(velo_model *model, velo_model_metadata *out, velo_error *err);
velo_status textgen_submit(velo_model *model, const velo_request *req, velo_error *err);
const void *textgen_get_extension(velo_model *model, const char *name);

/* For tests: the llama model and tokenizer behind a loaded model. */
llama_model *textgen_model_llama(velo_model *model);
const velo_tokenizer *textgen_model_tokenizer(velo_model *model);

#endif
