/*
 * velo/text.h - the text extension of a task plugin ("velo.text.v1").
 *
 * Text-generation models offer it through velo_task_iface.get_extension so
 * that the host can serve velo.v1.TextGeneration/Tokenize without knowing
 * anything about tokenizers.
 */
#ifndef VELO_TEXT_H
#define VELO_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "velo/status.h"
#include "velo/task.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VELO_TEXT_EXTENSION "velo.text.v1"

typedef struct velo_text_ext {
  uint32_t struct_size; /* sizeof(velo_text_ext) */
  /* Tokenizes text[0..len) as the model tokenizes a prompt (add_special:
   * BOS/EOS as the model's GGUF metadata asks).  On success *ids is a
   * malloc'd array of *n_ids token ids owned by the caller (free() it with
   * free_ids).  INVALID_ARGUMENT for text that is not UTF-8.  Thread-safe. */
  velo_status (*tokenize)(velo_model *model, const char *text, size_t len,
                          bool add_special, int32_t **ids, size_t *n_ids,
                          velo_error *err);
  void (*free_ids)(int32_t *ids);
  /* Vocabulary size of the model. Thread-safe. */
  int64_t (*vocab_size)(velo_model *model);
} velo_text_ext;

#ifdef __cplusplus
}
#endif
#endif /* VELO_TEXT_H */
