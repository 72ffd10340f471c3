/*
 * repository.h - the model repository: a directory with one subdirectory
 * per model, each holding the model file(s) and a config.json, as Triton
 * users know it (--model-repository DIR, --model-control none|explicit).
 * The user's guide is docs/repository.md.
 *
 * A model's name is its directory's name: 1 to 255 letters, digits, '_',
 * '-' or '.', not starting with '.' (other directories are skipped with a
 * warning, as are directories without a config.json).
 *
 * config.json (all keys optional except where noted):
 *   {
 *     "task": "text-generation",      task plugin name (default text-generation)
 *     "file": "model.gguf",           model file, relative to the model's
 *                                     directory (required unless the task
 *                                     needs no file, e.g. "identity")
 *     "backend": "auto",              "auto" or a backend name, either optionally
 *                                     with ":N", the device ("cuda:1"); default:
 *                                     velod's --backend
 *     "device": 0,                    device index
 *     "context_length": 2048,         tokens per sequence (0: the model's)
 *     "threads": 0,                   backend threads (0: the backend's choice)
 *     "kv_cache_size": "512MiB",      KV cache pool: an integer (token slots) or
 *                                     a string as velod's --kv-cache-size takes
 *                                     (core/size.h); default: velod's
 *                                     --kv-cache-size, else the task's
 *     "parameters": { "k": v, ... }   task-specific settings: strings,
 *                                     numbers and booleans, passed to the
 *                                     task as velo_params
 *   }
 * Unknown keys are an error (a typo must not be silently ignored), and so
 * are wrong types, out-of-range numbers, an absolute "file" or one with a
 * ".." component, one whose real path (links followed) is outside the
 * model's directory, a "file" that does not exist, a key that appears
 * twice in one object, and a config.json that is not a regular file.  Each error names the model, the file,
 * the key and what is allowed.  config.json is read again at every load,
 * so an edited config takes effect on the next load.
 *
 * Model control:
 *   none      every model of the repository is loaded at start-up; load and
 *             unload requests are refused (FAILED_PRECONDITION);
 *   explicit  only the models named with --load-model are loaded at
 *             start-up ("*": all of them); the others are loaded and
 *             unloaded on request.  A model directory added after start-up
 *             can be loaded by name.
 *
 * A model that fails to load, at start-up or on request, is UNAVAILABLE
 * with the error as its reason; the server and the other models are
 * untouched.  At start-up the caller decides whether that is fatal
 * (velod: --exit-on-error, true by default as in Triton).  The server is
 * ready (velo_repository_ready) while every start-up model (control none:
 * all; explicit: the --load-model ones) is READY, except those unloaded on
 * request since; models loaded at run time do not count (a failed load
 * request is reported to its caller).
 *
 * Reloading a loaded model (a load request for it) reads its config.json
 * and loads the new model next to the old one (both in memory meanwhile);
 * only when the new one is ready is it swapped in under the name, and the
 * old one unloaded (its requests in flight end with UNAVAILABLE).  There
 * is no gap: requests find the old model, then the new one.  If the config
 * is broken or the new load fails, the old model keeps serving, untouched.
 *
 * Thread-safety: every function may be called from any thread; loads and
 * unloads of the same model are serialised.
 */
#ifndef VELO_CORE_REPOSITORY_H
#define VELO_CORE_REPOSITORY_H

#include <stdbool.h>
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
 * with --model) over reg, which must outlive it.  With NONE control every
 * model in dir is loaded; with EXPLICIT the names in startup_models[0..n)
 * are ("*" for all; ignored with NONE).  A model that fails to load at
 * start-up is logged (ERROR, naming it and why) and left UNAVAILABLE; open
 * still succeeds, and velo_repository_ready() says false (and names it),
 * so the caller decides whether to go on.
 * Errors: NOT_FOUND (dir does not exist, or a startup name is not in it:
 * the message names it and lists the models), INVALID_ARGUMENT (dir is not
 * a directory, a malformed startup name), PERMISSION_DENIED (unreadable),
 * RESOURCE_EXHAUSTED; nothing is loaded then and *out is untouched.
 * *out owns nothing of reg. */
velo_status velo_repository_open(const char *dir, velo_registry *reg, velo_model_control control,
                                 const char *const *startup_models, size_t n_startup,
                                 velo_repository **out, velo_error *err);
/* Frees the repository.  Loaded models stay in the registry (destroy the
 * registry to unload them).  No other call on repo may be running.  NULL
 * is a no-op. */
void velo_repository_close(velo_repository *repo);

velo_model_control velo_repository_control(const velo_repository *repo);

/* Every model the repository knows plus every model loaded otherwise
 * (--model), sorted by name; with ready_only, only the READY ones.  The
 * directory is read again, so new model directories show up (UNAVAILABLE
 * "not loaded") and removed ones that are not loaded disappear.  *out is
 * malloc'd (NULL when the count is 0 or memory ran out); free with
 * velo_repository_index_free.  Returns the count. */
size_t velo_repository_index(velo_repository *repo, bool ready_only, velo_repository_model **out);
void velo_repository_index_free(velo_repository_model *rows, size_t n);

/* Loads (or reloads, if loaded: see above) the repository model name;
 * returns when it is READY or has failed.  FAILED_PRECONDITION with
 * control NONE; INVALID_ARGUMENT for a malformed name or a bad config.json;
 * NOT_FOUND if the repository has no such model (or no model file); the
 * load's own error otherwise (the server and the other models are
 * untouched by a failed load).  A second load or unload of the same model
 * waits for this one. */
velo_status velo_repository_load(velo_repository *repo, const char *name, velo_error *err);

/* Unloads name (see velo_registry_unload for what happens to requests in
 * flight: they end with UNAVAILABLE "model 'x' is being unloaded"); returns
 * when its memory is released.  Works for models loaded with --model too.
 * FAILED_PRECONDITION with control NONE; NOT_FOUND if not loaded. */
velo_status velo_repository_unload(velo_repository *repo, const char *name, velo_error *err);

/* True when every start-up model not unloaded on request since is READY
 * (see above; for ServerReady and the health service).  Otherwise why (may
 * be NULL) gets the first model that is not, e.g. "model 'x' is
 * UNAVAILABLE: <the load error>" or "model 'x' is LOADING" during a
 * reload. */
bool velo_repository_ready(velo_repository *repo, char *why, size_t why_size);

/* The state of one model ("READY", "LOADING", "UNLOADING", "UNAVAILABLE";
 * static strings), repository or --model, for ModelReady.  A model nobody
 * knows is "UNAVAILABLE" with reason "unknown model"; otherwise reason
 * (may be NULL) gets why it is not READY ("" when READY). */
const char *velo_repository_model_state(velo_repository *repo, const char *name, char *reason,
                                        size_t reason_size);

#endif
