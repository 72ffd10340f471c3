/*
 * velod.c - velod's main program: parses the command line, loads the
 * plugins and the models, serves gRPC until SIGINT or SIGTERM, then shuts
 * down gracefully.  `velod --list-plugins` only lists what the plugin host
 * finds.  Operations guide: docs/operations.md.
 *
 * Start-up order matters (shared/PITFALLS.md): SIGINT/SIGTERM are blocked
 * before grpc_init() and before any plugin starts a thread, so that every
 * thread inherits the mask and the main thread alone takes the signals with
 * sigwait().  Shutdown: stop accepting calls, give calls in flight a grace
 * period (a second signal ends it early), cancel the rest, destroy the
 * server and its queue, then the models, the plugins, and gRPC.
 *
 * Exit status: 0 after a clean shutdown (or --help, --version,
 * --list-plugins), 1 when start-up fails (model, plugin, address), 2 for a
 * bad command line.
 */
#include <errno.h>
#include <getopt.h>
#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <limits.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "host.h"
#include "log.h"
#include "plugin_host.h"
#include "registry.h"
#include "repository.h"
#include "server.h"
#include "size.h"

#ifndef VELO_VERSION
#define VELO_VERSION "unknown"
#endif

#define LOG_SOURCE "velod"
#define DEFAULT_LISTEN "127.0.0.1:50051"
#define DEFAULT_MODEL_FILE "stories260K.gguf"
#define DEFAULT_MODEL_URL \
  "https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf"
#define SHUTDOWN_GRACE_S 5 /* seconds calls in flight get after SIGTERM */

enum { EXIT_START_FAILED = 1, EXIT_USAGE = 2 };

typedef struct model_arg {
  char *name; /* NULL: derived from the file name by the registry */
  char *path;
} model_arg;

typedef struct velod_options {
  const char *listen;
  model_arg *models;
  size_t n_models;
  const char *plugin_dir;
  const char *backend;
  int32_t threads;     /* 0: backend default */
  int64_t ctx_size;    /* 0: the model's */
  velo_size kv_cache;  /* --kv-cache-size; 0/0: the task's default */
  size_t max_receive;  /* --max-receive-message-bytes */
  size_t max_send;     /* --max-send-message-bytes */
  const char *model_repository; /* --model-repository DIR, or NULL */
  const char *model_control;    /* --model-control as given, or NULL */
  velo_model_control control;
  const char **load_models;     /* --load-model NAME..., borrowed from argv */
  size_t n_load_models;
  bool exit_on_error;           /* --exit-on-error (default true) */
  bool list_plugins;
  velo_log_level log_level;
} velod_options;

/* ------------------------------------------------------------------ */
/* Command line                                                        */
/* ------------------------------------------------------------------ */

/* Prints the usage text to f. */
static void usage(FILE *f) {
  fprintf(f,
          "Usage: velod [OPTION]...\n"
          "Serve models over gRPC (velo.v1, grpc.health.v1, server reflection).\n"
          "\n"
          "  --listen HOST:PORT      address to serve on (default " DEFAULT_LISTEN ";\n"
          "                          port 0 picks a free port, logged at start-up)\n"
          "  --model [NAME=]PATH     load the model file PATH and serve it as NAME\n"
          "                          (default NAME: the file name without .gguf);\n"
          "                          repeatable.  Without --model or --model-repository:\n"
          "                          models/" DEFAULT_MODEL_FILE " of the source tree, or\n"
          "                          ../shared/models/ next to it\n"
          "  --plugin-dir DIR        look for plugins in DIR first\n"
          "  --backend auto|NAME[:N] compute backend and device, e.g. cuda:1 (default auto:\n"
          "                          the best available, falling back to cpu, each rejected\n"
          "                          backend logged with its reason); a named backend that\n"
          "                          cannot run here stops velod at start-up.  Also for\n"
          "                          repository models whose config.json sets no backend\n"
          "  --threads N             backend threads per model (default: the backend's)\n"
          "  --ctx-size N            context length per sequence, in tokens\n"
          "                          (default: the model's)\n"
          "  --kv-cache-size SIZE    KV cache pool per model, shared by its sequences:\n"
          "                          a token count (4096) or bytes with a unit, no space\n"
          "                          (512MiB, 2GB; B, KB, MB, GB, TB, KiB, MiB, GiB, TiB);\n"
          "                          for --model and repository models whose config.json\n"
          "                          sets no kv_cache_size (default: the task's)\n"
          "  --model-repository DIR  serve the models of DIR: one subdirectory per model\n"
          "                          with a config.json (see docs/repository.md)\n"
          "  --model-control none|explicit\n"
          "                          none (default): load every repository model at\n"
          "                          start-up, refuse load/unload requests; explicit:\n"
          "                          load only --load-model ones, then on request\n"
          "  --load-model NAME       with explicit control: load NAME at start-up\n"
          "                          (repeatable; '*' alone loads every model)\n"
          "  --exit-on-error true|false\n"
          "                          exit when a repository model fails to load at\n"
          "                          start-up (default true); false: serve without it\n"
          "  --max-receive-message-bytes N\n"
          "                          largest request message velod accepts, in bytes\n"
          "                          (default %zu = 8 MiB; at most 2147483647)\n"
          "  --max-send-message-bytes N\n"
          "                          largest response message velod sends, in bytes\n"
          "                          (default %zu = 8 MiB; at most 2147483647)\n"
          "  --list-plugins          list the plugins found, probe them, and exit\n"
          "  --log-level LEVEL       debug, info, warn or error (default info)\n"
          "  --version               print the version and exit\n"
          "  -h, --help              print this help and exit\n"
          "\n"
          "SIGINT or SIGTERM shuts down gracefully: calls in flight get %d s, a second\n"
          "signal cancels them at once.  See docs/operations.md.\n",
          VELO_SERVER_DEFAULT_MAX_MESSAGE_BYTES, VELO_SERVER_DEFAULT_MAX_MESSAGE_BYTES,
          SHUTDOWN_GRACE_S);
}

/* Prints "velod: <message>" and the usage to stderr, and exits 2. */
__attribute__((format(printf, 1, 2), noreturn)) static void bad_usage(const char *fmt, ...) {
  va_list ap;
  fputs("velod: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("\n\n", stderr);
  usage(stderr);
  exit(EXIT_USAGE);
}

/* Parses a decimal integer in [lo, hi] for option opt, or exits 2. */
static long long parse_int(const char *opt, const char *s, long long lo, long long hi) {
  char *end;
  long long v;
  errno = 0;
  v = strtoll(s, &end, 10);
  if (errno || end == s || *end != '\0' || v < lo || v > hi)
    bad_usage("%s expects an integer from %lld to %lld, got '%s'", opt, lo, hi, s);
  return v;
}

/* Splits "[NAME=]PATH".  A '=' counts as the separator only when what is
 * before it contains no '/', so paths with '=' in a directory name work. */
#define MODEL_ARG_NAME_MAX 128

/* True if name is a served model name: 1..MODEL_ARG_NAME_MAX letters,
 * digits, '_', '-' or '.', not starting with '.' (the repository's rule,
 * with the shorter limit of a --model name). */
static bool valid_served_name(const char *name, size_t len) {
  if (len == 0 || len > MODEL_ARG_NAME_MAX || name[0] == '.') return false;
  for (size_t i = 0; i < len; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-' || c == '.'))
      return false;
  }
  return true;
}

static model_arg parse_model_arg(const char *arg) {
  model_arg m = {NULL, NULL};
  const char *eq = strchr(arg, '=');
  bool named = eq && memchr(arg, '/', (size_t)(eq - arg)) == NULL;
  if (named) {
    if (eq == arg) bad_usage("--model '%s': the name before '=' is empty", arg);
    if (!valid_served_name(arg, (size_t)(eq - arg)))
      bad_usage("--model '%.200s': '%.*s' is not a valid model name: names are 1 to %d letters, digits, "
                "'_', '-' or '.', not starting with '.'",
                arg, (int)(eq - arg > 200 ? 200 : eq - arg), arg, MODEL_ARG_NAME_MAX);
    m.name = strndup(arg, (size_t)(eq - arg));
    m.path = strdup(eq + 1);
  } else {
    m.path = strdup(arg);
  }
  if (!m.path || (named && !m.name)) {
    fputs("velod: out of memory\n", stderr);
    exit(EXIT_START_FAILED);
  }
  if (m.path[0] == '\0') bad_usage("--model '%s': the path is empty", arg);
  if (!named) { /* the default name (as the registry makes it) must be valid too */
    const char *base = strrchr(m.path, '/');
    base = base ? base + 1 : m.path;
    size_t len = strlen(base);
    if (len > 5 && strcmp(base + len - 5, ".gguf") == 0) len -= 5;
    if (!valid_served_name(base, len))
      bad_usage("--model '%.200s': the file name '%.*s' is not a valid model name (1 to %d letters, "
                "digits, '_', '-' or '.', not starting with '.'): give one, as --model NAME=PATH",
                arg, (int)(len > 200 ? 200 : len), base, MODEL_ARG_NAME_MAX);
  }
  return m;
}

/* Maps a --log-level word to *out; false (and *out untouched) if unknown. */
static bool parse_log_level(const char *s, velo_log_level *out) {
  static const struct {
    const char *name;
    velo_log_level level;
  } levels[] = {{"debug", VELO_LOG_DEBUG},
                {"info", VELO_LOG_INFO},
                {"warn", VELO_LOG_WARN},
                {"warning", VELO_LOG_WARN},
                {"error", VELO_LOG_ERROR}};
  for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
    if (strcmp(s, levels[i].name) == 0) {
      *out = levels[i].level;
      return true;
    }
  return false;
}

/* Prints the version line on stdout. */
static void print_version(void) {
  printf("velod %s (plugin ABI %d.%d, gRPC core %s, protobuf-c %s)\n", VELO_VERSION,
         VELO_ABI_MAJOR, VELO_ABI_MINOR, grpc_version_string(), protobuf_c_version());
}

/* Fills *o from argv, or exits (0 for --help/--version, 2 for errors). */
static void parse_options(int argc, char **argv, velod_options *o) {
  enum { OPT_LISTEN = 256, OPT_MODEL, OPT_PLUGIN_DIR, OPT_BACKEND, OPT_THREADS, OPT_CTX,
         OPT_LIST, OPT_LOG_LEVEL, OPT_VERSION, OPT_MAX_RECV, OPT_MAX_SEND, OPT_REPOSITORY,
         OPT_CONTROL, OPT_LOAD_MODEL, OPT_EXIT_ON_ERROR, OPT_KV_CACHE };
  static const struct option longopts[] = {
      {"listen", required_argument, NULL, OPT_LISTEN},
      {"model", required_argument, NULL, OPT_MODEL},
      {"plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR},
      {"backend", required_argument, NULL, OPT_BACKEND},
      {"threads", required_argument, NULL, OPT_THREADS},
      {"ctx-size", required_argument, NULL, OPT_CTX},
      {"kv-cache-size", required_argument, NULL, OPT_KV_CACHE},
      {"list-plugins", no_argument, NULL, OPT_LIST},
      {"max-receive-message-bytes", required_argument, NULL, OPT_MAX_RECV},
      {"max-send-message-bytes", required_argument, NULL, OPT_MAX_SEND},
      {"model-repository", required_argument, NULL, OPT_REPOSITORY},
      {"model-control", required_argument, NULL, OPT_CONTROL},
      {"load-model", required_argument, NULL, OPT_LOAD_MODEL},
      {"exit-on-error", required_argument, NULL, OPT_EXIT_ON_ERROR},
      {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
      {"version", no_argument, NULL, OPT_VERSION},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  int c;

  memset(o, 0, sizeof *o);
  o->listen = DEFAULT_LISTEN;
  o->backend = "auto";
  o->log_level = VELO_LOG_INFO;
  o->max_receive = VELO_SERVER_DEFAULT_MAX_MESSAGE_BYTES;
  o->max_send = VELO_SERVER_DEFAULT_MAX_MESSAGE_BYTES;
  o->exit_on_error = true;
  opterr = 0; /* our own messages */
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
      case OPT_LISTEN:
        if (!velo_server_listen_valid(optarg))
          bad_usage("--listen expects HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:50051), got '%s'",
                    optarg);
        o->listen = optarg;
        break;
      case OPT_MODEL: {
        model_arg *grown = realloc(o->models, (o->n_models + 1) * sizeof *grown);
        if (!grown) {
          fputs("velod: out of memory\n", stderr);
          exit(EXIT_START_FAILED);
        }
        o->models = grown;
        o->models[o->n_models++] = parse_model_arg(optarg);
        break;
      }
      case OPT_PLUGIN_DIR:
        o->plugin_dir = optarg;
        break;
      case OPT_BACKEND: {
        char name[64];
        int32_t dev;
        bool has_dev;
        velo_error err;
        velo_error_init(&err);
        if (optarg[0] == '\0') bad_usage("--backend needs a name or 'auto'");
        if (velo_backend_choice_parse(optarg, name, sizeof name, &dev, &has_dev, &err) != VELO_OK)
          bad_usage("--backend: %s", err.message);
        o->backend = optarg;
        break;
      }
      case OPT_THREADS:
        o->threads = (int32_t)parse_int("--threads", optarg, 1, 1024);
        break;
      case OPT_CTX:
        o->ctx_size = parse_int("--ctx-size", optarg, 1, INT32_MAX);
        break;
      case OPT_KV_CACHE: {
        velo_error err;
        velo_error_init(&err);
        if (velo_size_parse(optarg, &o->kv_cache, &err) != VELO_OK)
          bad_usage("--kv-cache-size: %s", err.message);
        break;
      }
      case OPT_LIST:
        o->list_plugins = true;
        break;
      case OPT_MAX_RECV:
        o->max_receive = (size_t)parse_int("--max-receive-message-bytes", optarg, 1, INT_MAX);
        break;
      case OPT_MAX_SEND:
        o->max_send = (size_t)parse_int("--max-send-message-bytes", optarg, 1, INT_MAX);
        break;
      case OPT_REPOSITORY:
        if (optarg[0] == '\0') bad_usage("--model-repository needs a directory");
        o->model_repository = optarg;
        break;
      case OPT_CONTROL:
        if (strcmp(optarg, "none") == 0)
          o->control = VELO_MODEL_CONTROL_NONE;
        else if (strcmp(optarg, "explicit") == 0)
          o->control = VELO_MODEL_CONTROL_EXPLICIT;
        else
          bad_usage("--model-control expects none or explicit, got '%s'", optarg);
        o->model_control = optarg;
        break;
      case OPT_LOAD_MODEL: {
        const char **grown = realloc(o->load_models, (o->n_load_models + 1) * sizeof *grown);
        if (!grown) {
          fputs("velod: out of memory\n", stderr);
          exit(EXIT_START_FAILED);
        }
        if (optarg[0] == '\0') bad_usage("--load-model needs a model name");
        o->load_models = grown;
        o->load_models[o->n_load_models++] = optarg;
        break;
      }
      case OPT_EXIT_ON_ERROR:
        if (strcmp(optarg, "true") == 0)
          o->exit_on_error = true;
        else if (strcmp(optarg, "false") == 0)
          o->exit_on_error = false;
        else
          bad_usage("--exit-on-error expects true or false, got '%s'", optarg);
        break;
      case OPT_LOG_LEVEL:
        if (!parse_log_level(optarg, &o->log_level))
          bad_usage("--log-level expects debug, info, warn or error, got '%s'", optarg);
        break;
      case OPT_VERSION:
        print_version();
        exit(0);
      case 'h':
        usage(stdout);
        exit(0);
      case ':':
        bad_usage("option '%s' needs a value", argv[optind - 1]);
      default:
        bad_usage("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) bad_usage("unexpected argument '%s'", argv[optind]);
  if (o->model_control && !o->model_repository)
    bad_usage("--model-control needs --model-repository DIR");
  if (o->n_load_models && o->control != VELO_MODEL_CONTROL_EXPLICIT)
    bad_usage("--load-model needs --model-control explicit (with none, every model is loaded)");
  for (size_t i = 0; i < o->n_load_models; i++)
    if (strcmp(o->load_models[i], "*") == 0 && o->n_load_models > 1)
      bad_usage("--load-model '*' loads every model and must be the only --load-model");
}

/* Frees what parse_options (and the default-model lookup) allocated. */
static void free_options(velod_options *o) {
  for (size_t i = 0; i < o->n_models; i++) {
    free(o->models[i].name);
    free(o->models[i].path);
  }
  free(o->models);
  free(o->load_models);
}

/* ------------------------------------------------------------------ */
/* The default model                                                   */
/* ------------------------------------------------------------------ */

/* True if path names a regular file (following links). */
static bool is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A malloc'd absolute path without "..", or a copy of path if that fails. */
static char *canonical(const char *path) {
  char *real = realpath(path, NULL);
  return real ? real : strdup(path);
}

/* The repository root as seen from the binary (build/bin/velod -> two
 * levels above bin), into buf; false if /proc/self/exe is unreadable. */
static bool repo_from_exe(char *buf, size_t size) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return false;
  exe[n] = '\0';
  for (int up = 0; up < 3; up++) { /* velod, bin, build */
    char *slash = strrchr(exe, '/');
    if (!slash) return false;
    *slash = '\0';
  }
  snprintf(buf, size, "%s", exe[0] ? exe : "/");
  return true;
}

/* Looks for stories260K.gguf in models/ of the repository (found from the
 * binary's path, then the current directory, then the source tree velod was
 * built from, for build trees outside the repository), then in
 * ../shared/models/ next to it.  Returns a malloc'd path, or NULL after printing where to
 * get the file. */
static char *find_default_model(void) {
  char roots[3][PATH_MAX];
  size_t n_roots = 0;
  char tried[6][PATH_MAX + 64];
  size_t n_tried = 0;
  const char *put_in;

  if (repo_from_exe(roots[n_roots], sizeof roots[0])) n_roots++;
  if (getcwd(roots[n_roots], sizeof roots[0]) &&
      (n_roots == 0 || strcmp(roots[0], roots[n_roots]) != 0))
    n_roots++;
  snprintf(roots[n_roots], sizeof roots[0], "%s", VELO_SOURCE_DIR);
  bool seen = false;
  for (size_t r = 0; r < n_roots; r++) seen = seen || strcmp(roots[r], roots[n_roots]) == 0;
  if (!seen) n_roots++;
  for (size_t r = 0; r < n_roots; r++) {
    snprintf(tried[n_tried], sizeof tried[0], "%s/models/" DEFAULT_MODEL_FILE, roots[r]);
    if (is_file(tried[n_tried])) return canonical(tried[n_tried]);
    n_tried++;
    snprintf(tried[n_tried], sizeof tried[0], "%s/../shared/models/" DEFAULT_MODEL_FILE,
             roots[r]);
    if (is_file(tried[n_tried])) return canonical(tried[n_tried]);
    n_tried++;
  }

  /* Where to put it: the repository the binary belongs to, if it is one. */
  put_in = n_roots ? roots[0] : ".";
  if (n_roots > 1) {
    char probe[PATH_MAX + 32];
    snprintf(probe, sizeof probe, "%s/CMakeLists.txt", roots[0]);
    if (!is_file(probe)) put_in = roots[1];
  }
  fprintf(stderr, "velod: no --model given and the default model " DEFAULT_MODEL_FILE
                  " was not found; looked for:\n");
  for (size_t i = 0; i < n_tried; i++) fprintf(stderr, "  %s\n", tried[i]);
  fprintf(stderr,
          "Get it from Hugging Face, repository ggml-org/models, file tinyllamas/" DEFAULT_MODEL_FILE
          ":\n"
          "  " DEFAULT_MODEL_URL "\n"
          "and save it as %s/models/" DEFAULT_MODEL_FILE ", e.g.\n"
          "  mkdir -p %s/models && curl -L -o %s/models/" DEFAULT_MODEL_FILE " " DEFAULT_MODEL_URL
          "\n"
          "or pass --model [NAME=]PATH.\n",
          put_in, put_in, put_in);
  return NULL;
}

/* ------------------------------------------------------------------ */
/* --list-plugins                                                      */
/* ------------------------------------------------------------------ */

/* --list-plugins: loads the plugins (without gRPC), prints the table on
 * stdout, unloads them.  Returns the exit status (0; 1 if the plugin host
 * cannot start). */
static int list_plugins(const velod_options *o) {
  velo_host host;
  velo_plugin_host *ph = NULL;
  velo_plugin_host_options pho = {.plugin_dir = o->plugin_dir};
  velo_error err;
  size_t n;
  const char *head[6] = {"NAME", "KIND", "VERSION", "ABI", "PATH", "PROBE"};
  int w[5];

  velo_error_init(&err);
  velo_host_table_init(&host, NULL, NULL);
  if (velo_plugin_host_create(&pho, &host, &ph, &err) != VELO_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "cannot start the plugin host: %s", err.message);
    return EXIT_START_FAILED;
  }
  n = velo_plugin_host_count(ph);

  char (*rows)[6][512] = n ? calloc(n, sizeof *rows) : NULL;
  if (n && !rows) {
    velo_plugin_host_destroy(ph);
    fputs("velod: out of memory\n", stderr);
    return EXIT_START_FAILED;
  }
  for (int c = 0; c < 5; c++) w[c] = (int)strlen(head[c]);
  for (size_t i = 0; i < n; i++) {
    const velo_plugin *p = velo_plugin_host_get(ph, i);
    const velo_plugin_descriptor *d = velo_plugin_descriptor_of(p);
    char reason[400] = "";
    velo_status st = velo_plugin_probe(p, reason, sizeof reason);

    snprintf(rows[i][0], sizeof rows[i][0], "%s", d->name ? d->name : "?");
    snprintf(rows[i][1], sizeof rows[i][1], "%s", velo_plugin_kind_name(d->kind));
    snprintf(rows[i][2], sizeof rows[i][2], "%s", d->version ? d->version : "?");
    snprintf(rows[i][3], sizeof rows[i][3], "%u.%u", (unsigned)d->abi_major,
             (unsigned)d->abi_minor);
    snprintf(rows[i][4], sizeof rows[i][4], "%s", velo_plugin_path(p));
    if (st == VELO_OK || strncmp(reason, "unavailable", 11) == 0)
      snprintf(rows[i][5], sizeof rows[i][5], "%s", reason[0] ? reason : "available");
    else
      snprintf(rows[i][5], sizeof rows[i][5], "unavailable: %s",
               reason[0] ? reason : velo_status_name(st));
    for (int c = 0; c < 5; c++)
      if ((int)strlen(rows[i][c]) > w[c]) w[c] = (int)strlen(rows[i][c]);
  }
  printf("%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", w[0], head[0], w[1], head[1], w[2], head[2],
         w[3], head[3], w[4], head[4], head[5]);
  for (size_t i = 0; i < n; i++)
    printf("%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", w[0], rows[i][0], w[1], rows[i][1], w[2],
           rows[i][2], w[3], rows[i][3], w[4], rows[i][4], rows[i][5]);
  if (n == 0) {
    const char *const *dirs = NULL;
    size_t nd = velo_plugin_host_search_dirs(ph, &dirs);
    fprintf(stderr, "velod: no plugins found; searched:");
    for (size_t i = 0; i < nd; i++) fprintf(stderr, " %s", dirs[i]);
    fprintf(stderr, "%s\n", nd ? "" : " (nothing)");
  }
  fflush(stdout);
  free(rows);
  velo_plugin_host_destroy(ph);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Serving                                                             */
/* ------------------------------------------------------------------ */

/* Routes gRPC's own log lines (errors by default; GRPC_VERBOSITY raises
 * it) into velod's log. */
static void grpc_log_to_velo(gpr_log_func_args *a) {
  velo_log_level level = a->severity == GPR_LOG_SEVERITY_ERROR  ? VELO_LOG_ERROR
                         : a->severity == GPR_LOG_SEVERITY_INFO ? VELO_LOG_INFO
                                                                : VELO_LOG_DEBUG;
  const char *file = a->file ? strrchr(a->file, '/') : NULL;
  velo_log(level, "grpc", "%s (%s:%d)", a->message, file ? file + 1 : (a->file ? a->file : "?"),
           a->line);
}

/* Waits for SIGINT/SIGTERM (blocked in every thread), then shuts the server
 * down: a grace period for calls in flight, ended early by a second
 * signal, then cancellation of what is left. */
static void serve_until_signal(velo_server *srv, const sigset_t *signals) {
  int sig = 0;
  struct timespec no_wait = {0, 0};
  struct timespec t0, now;
  bool cancelled = false;
  int warnings = 0;
  double elapsed;

  while (sigwait(signals, &sig) != 0) {
  }
  velo_log(VELO_LOG_INFO, LOG_SOURCE,
           "received %s: shutting down; %zu call(s) in flight get %d s to finish "
           "(a second signal cancels them now)",
           sig == SIGINT ? "SIGINT" : "SIGTERM", velo_server_calls_in_flight(srv),
           SHUTDOWN_GRACE_S);
  velo_server_begin_shutdown(srv);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (!velo_server_wait_shutdown(srv, 100)) {
    int got = sigtimedwait(signals, NULL, &no_wait);
    clock_gettime(CLOCK_MONOTONIC, &now);
    elapsed = (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) * 1e-9;
    size_t in_flight = velo_server_calls_in_flight(srv);
    if (!cancelled && in_flight == 0) {
      /* None of our calls is left: gRPC is only waiting for idle client
       * connections to close, which the grace period is not for. */
      velo_log(VELO_LOG_DEBUG, LOG_SOURCE, "no call in flight: closing idle connections now");
      velo_server_cancel_all(srv);
      cancelled = true;
    } else if (!cancelled && (got > 0 || elapsed >= SHUTDOWN_GRACE_S)) {
      velo_log(VELO_LOG_INFO, LOG_SOURCE, "cancelling %zu call(s) still in flight", in_flight);
      velo_server_cancel_all(srv);
      cancelled = true;
    }
    if (cancelled && elapsed >= SHUTDOWN_GRACE_S + 5.0 * (warnings + 1)) {
      warnings++;
      velo_log(VELO_LOG_WARN, LOG_SOURCE,
               "still waiting for %zu call(s) to end (a task plugin has not answered them)",
               velo_server_calls_in_flight(srv));
    }
  }
}

/* Loads every model; false (after logging why) on the first failure. */
static bool load_models(velo_registry *reg, const velod_options *o) {
  for (size_t i = 0; i < o->n_models; i++) {
    velo_model_spec spec = {0};
    velo_error err;
    velo_error_init(&err);
    spec.name = o->models[i].name;
    spec.path = o->models[i].path;
    spec.backend = o->backend;
    spec.context_length = o->ctx_size;
    spec.n_threads = o->threads;
    if (velo_registry_load(reg, &spec, &err) != VELO_OK) {
      if (!err.message[0]) snprintf(err.message, sizeof err.message, "%s", velo_status_name(err.code));
      if (strstr(err.message, spec.path)) /* the message names the file already */
        velo_log(VELO_LOG_ERROR, LOG_SOURCE, "cannot load model: %s", err.message);
      else
        velo_log(VELO_LOG_ERROR, LOG_SOURCE, "cannot load model %s: %s", spec.path, err.message);
      return false;
    }
  }
  return true;
}

int main(int argc, char **argv) {
  velod_options o;
  sigset_t signals;
  velo_host host;
  velo_plugin_host *ph = NULL;
  velo_plugin_host_options pho = {0};
  velo_registry *reg = NULL;
  velo_repository *repo = NULL;
  velo_server *srv = NULL;
  velo_server_options so = {0};
  velo_error err;
  char names[1024];
  size_t n_models;
  int rc = EXIT_START_FAILED;

  parse_options(argc, argv, &o);
  velo_log_set_level(o.log_level);
  if (o.list_plugins) {
    rc = list_plugins(&o);
    free_options(&o);
    return rc;
  }
  if (o.n_models == 0 && !o.model_repository) {
    char *path = find_default_model();
    if (!path) {
      free_options(&o);
      return EXIT_START_FAILED;
    }
    o.models = calloc(1, sizeof *o.models);
    if (!o.models) {
      free(path);
      return EXIT_START_FAILED;
    }
    o.models[0].path = path;
    o.n_models = 1;
  }

  /* Before grpc_init and any plugin thread: every thread inherits it. */
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, NULL);
  signal(SIGPIPE, SIG_IGN); /* a closed stderr or socket must not kill the server */

  gpr_set_log_function(grpc_log_to_velo);
  grpc_init();
  velo_log(VELO_LOG_INFO, LOG_SOURCE, "velod %s (plugin ABI %d.%d, gRPC core %s)", VELO_VERSION,
           VELO_ABI_MAJOR, VELO_ABI_MINOR, grpc_version_string());

  velo_error_init(&err);
  /* A busy port fails now, not after minutes of model loading. */
  if (velo_server_probe_listen(o.listen, &err) != VELO_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "%s", err.message);
    goto out;
  }
  velo_host_table_init(&host, velo_server_respond, velo_server_call_cancelled);
  pho.plugin_dir = o.plugin_dir;
  if (velo_plugin_host_create(&pho, &host, &ph, &err) != VELO_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "cannot start the plugin host: %s", err.message);
    goto out;
  }
  if (velo_plugin_host_count(ph) == 0) {
    const char *const *dirs = NULL;
    size_t nd = velo_plugin_host_search_dirs(ph, &dirs);
    char where[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < nd && used < sizeof where; i++) {
      int wr = snprintf(where + used, sizeof where - used, "%s%s", i ? ", " : "", dirs[i]);
      if (wr > 0) used += (size_t)wr;
    }
    velo_log(VELO_LOG_WARN, LOG_SOURCE, "no plugins found; searched: %s (use --plugin-dir DIR)",
             nd ? where : "nothing");
  }
  if (velo_registry_create(ph, &host, &reg, &err) != VELO_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "cannot create the model registry: %s", err.message);
    goto out;
  }
  /* --kv-cache-size: for --model models and repository models whose
   * config.json sets no kv_cache_size. */
  velo_registry_set_kv_cache_default(reg, o.kv_cache.tokens, o.kv_cache.bytes);
  /* --backend: for --model models and repository models whose config.json
   * sets no backend; a named backend that cannot run stops us now. */
  if (velo_registry_set_backend_default(reg, o.backend, &err) != VELO_OK ||
      velo_registry_check_backend(reg, o.backend, &err) != VELO_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "--backend %s: %s", o.backend, err.message);
    goto out;
  }
  if (!load_models(reg, &o)) goto out;
  /* The repository after the --model models (a name taken by one of them
   * leaves the repository's model UNAVAILABLE). */
  if (velo_repository_open(o.model_repository, reg, o.control, o.load_models, o.n_load_models,
                           &repo, &err) != VELO_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "%s", err.message);
    goto out;
  }
  {
    char why[VELO_ERROR_MESSAGE_MAX + 64];
    if (o.exit_on_error && !velo_repository_ready(repo, why, sizeof why)) {
      velo_log(VELO_LOG_ERROR, LOG_SOURCE,
               "%s; exiting (--exit-on-error true; with --exit-on-error false velod serves the "
               "other models and reports it UNAVAILABLE)",
               why);
      goto out;
    }
  }

  so.listen = o.listen;
  so.registry = reg;
  so.repository = repo;
  so.n_threads = 2;
  so.max_receive_message_bytes = o.max_receive;
  so.max_send_message_bytes = o.max_send;
  if (velo_server_create(&so, &srv, &err) != VELO_OK) {
    velo_log(VELO_LOG_ERROR, LOG_SOURCE, "%s", err.message);
    goto out;
  }
  {
    velo_model_entry **list = NULL;
    size_t used = 0;
    n_models = velo_registry_list(reg, &list);
    names[0] = '\0';
    for (size_t i = 0; i < n_models; i++) {
      if (used < sizeof names) {
        int wr = snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                          list[i]->name);
        if (wr > 0) used += (size_t)wr;
      }
      velo_model_entry_release(list[i]);
    }
    free(list);
  }
  velo_log(VELO_LOG_INFO, LOG_SOURCE, "listening on %s, serving %zu model(s): %s",
           velo_server_address(srv), n_models, names);
  velo_log(VELO_LOG_INFO, LOG_SOURCE,
           "message limits: requests up to %zu bytes (--max-receive-message-bytes), responses "
           "up to %zu bytes (--max-send-message-bytes)",
           o.max_receive, o.max_send);

  serve_until_signal(srv, &signals);
  velo_log(VELO_LOG_INFO, LOG_SOURCE, "server stopped (%llu generate call(s) were cancelled over its lifetime, by clients, deadlines or the shutdown)",
           (unsigned long long)velo_server_cancelled_count(srv));
  rc = 0;

out:
  velo_server_destroy(srv); /* the server and its queue, before the models */
  velo_repository_close(repo);
  if (reg) velo_registry_destroy(reg);
  velo_plugin_host_destroy(ph);
  grpc_shutdown();
  free_options(&o);
  if (rc == 0) velo_log(VELO_LOG_INFO, LOG_SOURCE, "bye");
  return rc;
}
