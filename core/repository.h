/*
 * repository.h - the model repository: a directory with one subdirectory
 * per model, each holding the model file(s) and a config.json, as Triton
 * users know it (--model-repository DIR, --model-control none|explicit).
 *
 * config.json (all keys optional except where noted):
 *   {
 *     "task": "text-generation",      task plugin name (default text-generation)
 *     "file": "model.gguf",           model file, relative to the model's
 *                                     directory (required unless the task
 *                                     needs no file, e.g. "identity")
 *     "backend": "auto",              "auto" or a backend name
 *     "device": 0,                    device index
 *     "context_length": 2048,         tokens per sequence (0: the model's)
 *     "threads": 0,                   backend threads (0: the backend's choice)
 *     "parameters": { "k": v, ... }   task-specific settings: strings,
 *                                     numbers and booleans, passed to the
 *                                     task as velo_params
 *   }
 * Unknown keys are an error (a typo must not be silently ignored).
 *
 * Model control:
 *   none      every model of the repository is loaded at start-up; load and
 *             unload requests are refused (FAILED_PRECONDITION);
 *   explicit  only the models named with --load-model are loaded at
 *             start-up; the others are loaded and unloaded on request.
 *
 * Thread-safety: every function may be called from any thread; loads and
 * unloads of the same model are serialised.
 */
#ifndef VELO_CORE_REPOSITORY_H
#define VELO_CORE_REPOSITORY_H

#include <stddef.h>

#include "registry.h"

typedef struct velo_repository velo_repository;

typedef enum velo_model_control {
  VELO_MODEL_CONTROL_NONE = 0,
  VELO_MODEL_CONTROL_EXPLICIT = 1
} velo_model_control;

/* One row of the repository index (RepositoryIndex, velo models). */
typedef struct velo_repository_model {
  char *name;
  char *state;  /* "READY", "LOADING", "UNLOADING", "UNAVAILABLE" */
  char *reason; /* why it is not READY ("" otherwise): e.g. the last load error */
} velo_repository_model;

/* Opens the repository dir (may be NULL: no repository, only models given
 * with --model) over reg.  With NONE control every model in dir is loaded;
 * with EXPLICIT the names in startup_models[0..n) are.  A model that fails
 * to load at start-up is an error (the message names it and why) unless
 * the caller chooses to go on.  *out owns nothing of reg. */
velo_status velo_repository_open(const char *dir, velo_registry *reg, velo_model_control control,
                                 const char *const *startup_models, size_t n_startup,
                                 velo_repository **out, velo_error *err);
void velo_repository_close(velo_repository *repo);

velo_model_control velo_repository_control(const velo_repository *repo);

/* Every model the repository knows plus every model loaded otherwise
 * (--model), sorted by name.  *out is malloc'd; free with
 * velo_repository_index_free.  Returns the count. */
size_t velo_repository_index(velo_repository *repo, bool ready_only, velo_repository_model **out);
void velo_repository_index_free(velo_repository_model *rows, size_t n);

/* Loads (or reloads, if loaded) the repository model name.
 * FAILED_PRECONDITION with control NONE; NOT_FOUND if the repository has
 * no such model; the load's own error otherwise (the server and the other
 * models are untouched by a failed load). */
velo_status velo_repository_load(velo_repository *repo, const char *name, velo_error *err);

/* Unloads name (see velo_registry_unload for what happens to requests in
 * flight).  FAILED_PRECONDITION with control NONE; NOT_FOUND if not loaded. */
velo_status velo_repository_unload(velo_repository *repo, const char *name, velo_error *err);

#endif
