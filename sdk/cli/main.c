/*
 * main.c - `velo`, the command-line client of velod.
 *
 * It parses the command line, builds the velo.v1 request messages with
 * protobuf-c, calls velod through client.c and prints the answers:
 *
 *   velo generate "Once upon a time" --max-tokens 16 --temperature 0
 *   velo models [--counters]
 *   velo tokenize "Once upon a time"
 *   velo health
 *   velo load NAME / velo unload NAME   (model control, --model-control explicit)
 *
 * Generated text goes to stdout as it streams in (flushed after every
 * message); the finish reason and token counts go to stderr at the end.
 * A failed call prints the gRPC status name and message on stderr and
 * exits 1; a usage error exits 2.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "grpc_health/v1/health.pb-c.h"
#include "velo/v1/velo.pb-c.h"

#define DEFAULT_SERVER "127.0.0.1:50051"
#define DEFAULT_UNARY_TIMEOUT_MS 10000L
#define DEFAULT_CONTROL_TIMEOUT_MS 600000L /* load/unload: as long as a model load */

enum command { CMD_NONE, CMD_GENERATE, CMD_MODELS, CMD_TOKENIZE, CMD_HEALTH, CMD_LOAD, CMD_UNLOAD };

/* Bits saying which commands accept an option. */
#define FOR_GENERATE (1u << CMD_GENERATE)
#define FOR_MODELS (1u << CMD_MODELS)
#define FOR_TOKENIZE (1u << CMD_TOKENIZE)
#define FOR_HEALTH (1u << CMD_HEALTH)
#define FOR_CONTROL ((1u << CMD_LOAD) | (1u << CMD_UNLOAD))
#define FOR_ALL (FOR_GENERATE | FOR_MODELS | FOR_TOKENIZE | FOR_HEALTH | FOR_CONTROL)

/* Everything the command line can say. */
typedef struct options {
  enum command cmd;
  const char *text; /* the prompt (generate), the text (tokenize), the model (load, unload) */
  const char *server;
  const char *model;
  const char *service; /* health */
  double timeout_s;    /* <= 0: the command's default */
  bool has_timeout;
  Velo__V1__GenerateRequest gen; /* sampling fields, filled as parsed */
  char **stops;
  size_t n_stops;
  bool no_special; /* tokenize: add_special = false */
  bool counters;   /* models: print each model's engine counters */
} options;

enum opt_id {
  OPT_SERVER = 1000, OPT_TIMEOUT, OPT_MODEL, OPT_MAX_TOKENS, OPT_TEMPERATURE, OPT_SEED, OPT_TOP_K,
  OPT_TOP_P, OPT_MIN_P, OPT_REPEAT_PENALTY, OPT_REPEAT_LAST_N, OPT_STOP, OPT_IGNORE_EOS,
  OPT_NO_SPECIAL, OPT_SERVICE, OPT_HELP, OPT_VERSION, OPT_COUNTERS
};

/* Which commands take each option (indexed by opt_id - OPT_SERVER). */
static const unsigned option_commands[] = {
    [OPT_SERVER - OPT_SERVER] = FOR_ALL,
    [OPT_TIMEOUT - OPT_SERVER] = FOR_ALL,
    [OPT_MODEL - OPT_SERVER] = FOR_GENERATE | FOR_TOKENIZE,
    [OPT_MAX_TOKENS - OPT_SERVER] = FOR_GENERATE,
    [OPT_TEMPERATURE - OPT_SERVER] = FOR_GENERATE,
    [OPT_SEED - OPT_SERVER] = FOR_GENERATE,
    [OPT_TOP_K - OPT_SERVER] = FOR_GENERATE,
    [OPT_TOP_P - OPT_SERVER] = FOR_GENERATE,
    [OPT_MIN_P - OPT_SERVER] = FOR_GENERATE,
    [OPT_REPEAT_PENALTY - OPT_SERVER] = FOR_GENERATE,
    [OPT_REPEAT_LAST_N - OPT_SERVER] = FOR_GENERATE,
    [OPT_STOP - OPT_SERVER] = FOR_GENERATE,
    [OPT_IGNORE_EOS - OPT_SERVER] = FOR_GENERATE,
    [OPT_NO_SPECIAL - OPT_SERVER] = FOR_TOKENIZE,
    [OPT_SERVICE - OPT_SERVER] = FOR_HEALTH,
    [OPT_HELP - OPT_SERVER] = FOR_ALL,
    [OPT_VERSION - OPT_SERVER] = FOR_ALL,
    [OPT_COUNTERS - OPT_SERVER] = FOR_MODELS,
};

static const struct option long_options[] = {
    {"server", required_argument, NULL, OPT_SERVER},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"model", required_argument, NULL, OPT_MODEL},
    {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
    {"temperature", required_argument, NULL, OPT_TEMPERATURE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"top-k", required_argument, NULL, OPT_TOP_K},
    {"top-p", required_argument, NULL, OPT_TOP_P},
    {"min-p", required_argument, NULL, OPT_MIN_P},
    {"repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY},
    {"repeat-last-n", required_argument, NULL, OPT_REPEAT_LAST_N},
    {"stop", required_argument, NULL, OPT_STOP},
    {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
    {"no-special", no_argument, NULL, OPT_NO_SPECIAL},
    {"service", required_argument, NULL, OPT_SERVICE},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {"counters", no_argument, NULL, OPT_COUNTERS},
    {NULL, 0, NULL, 0}};

static void usage(FILE *f) {
  fputs(
      "usage: velo COMMAND [ARGS] [OPTIONS]\n"
      "\n"
      "A command-line client of velod (the Velo inference server).\n"
      "\n"
      "commands:\n"
      "  generate PROMPT    stream a continuation of PROMPT to stdout; the finish\n"
      "                     reason and token counts go to stderr at the end\n"
      "  models             list the served models (-c, --counters: with each\n"
      "                     model's engine counters, as indented name value lines)\n"
      "  tokenize TEXT      print the token ids of TEXT as the model tokenizes a prompt\n"
      "  health             ask velod's health service (exit 0 when SERVING)\n"
      "  load NAME          load (or reload) the repository model NAME; waits until\n"
      "                     it is ready (needs velod --model-control explicit)\n"
      "  unload NAME        unload model NAME; its requests in flight end UNAVAILABLE\n"
      "\n"
      "options (all commands):\n"
      "  --server HOST:PORT velod's address (default $VELO_SERVER, else " DEFAULT_SERVER ")\n"
      "  --timeout SECONDS  deadline per call (default 10 s; generate: none;\n"
      "                     load, unload: 600 s)\n"
      "  -h, --help         this text;  --version  the CLI's version\n"
      "\n"
      "generate and tokenize:\n"
      "  --model NAME       served model (default: the first READY text-generation\n"
      "                     model velod lists)\n"
      "\n"
      "generate (unset: the server's defaults):\n"
      "  --max-tokens N     tokens to generate, >= 0\n"
      "  --temperature T    >= 0; 0 = greedy\n"
      "  --seed S           random seed (same seed and request, same output)\n"
      "  --top-k K          >= 0; 0 = off\n"
      "  --top-p P          in (0, 1]\n"
      "  --min-p P          in [0, 1]\n"
      "  --repeat-penalty R > 0; 1 = off\n"
      "  --repeat-last-n N  tokens the repeat penalty looks back\n"
      "  --stop S           stop string, not printed (repeatable)\n"
      "  --ignore-eos       keep generating past end-of-generation\n"
      "\n"
      "tokenize:\n"
      "  --no-special       no BOS/EOS (add_special = false)\n"
      "\n"
      "health:\n"
      "  --service NAME     the service to ask about (default: the whole server)\n"
      "\n"
      "Exit status: 0 success, 1 a call failed (the gRPC status and message are\n"
      "printed), 2 a usage error.\n",
      f);
}

/* Reports a usage error and returns 2 (the exit status). */
static int usage_error(const char *what, const char *arg) {
  fprintf(stderr, "velo: %s%s%s\n", what, arg ? ": " : "", arg ? arg : "");
  fprintf(stderr, "Try 'velo --help'.\n");
  return 2;
}

/* Parses a whole-string integer in [lo, hi].  Returns false on garbage. */
static bool parse_int(const char *s, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

/* Parses a whole-string unsigned 64-bit integer (decimal). */
static bool parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (*s == '-') return false;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end) return false;
  *out = (uint64_t)v;
  return true;
}

/* Parses a whole-string finite number. */
static bool parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v)) return false;
  *out = v;
  return true;
}

static enum command command_of(const char *s) {
  if (strcmp(s, "generate") == 0) return CMD_GENERATE;
  if (strcmp(s, "models") == 0) return CMD_MODELS;
  if (strcmp(s, "tokenize") == 0) return CMD_TOKENIZE;
  if (strcmp(s, "health") == 0) return CMD_HEALTH;
  if (strcmp(s, "load") == 0) return CMD_LOAD;
  if (strcmp(s, "unload") == 0) return CMD_UNLOAD;
  return CMD_NONE;
}

/* Applies one parsed option to o.  Returns 0, or the exit status of a usage
 * error. */
static int apply_option(options *o, int id, const char *arg, const char *name) {
  long long i;
  double d;
  Velo__V1__GenerateRequest *g = &o->gen;
  switch (id) {
    case OPT_SERVER: o->server = arg; break;
    case OPT_MODEL: o->model = arg; break;
    case OPT_SERVICE: o->service = arg; break;
    case OPT_TIMEOUT:
      if (!parse_double(arg, &d) || d <= 0) return usage_error("--timeout needs seconds > 0", arg);
      o->timeout_s = d;
      o->has_timeout = true;
      break;
    case OPT_MAX_TOKENS:
    case OPT_TOP_K:
    case OPT_REPEAT_LAST_N:
      /* Range checks are the server's job; only the int32 wire type is ours. */
      if (!parse_int(arg, INT32_MIN, INT32_MAX, &i)) {
        fprintf(stderr,
                "velo: --%s needs an integer from -2147483648 to 2147483647 (the server checks "
                "the field's own range), got '%s'\n",
                name, arg);
        fprintf(stderr, "Try 'velo --help'.\n");
        return 2;
      }
      if (id == OPT_MAX_TOKENS) {
        g->_max_tokens_case = VELO__V1__GENERATE_REQUEST___MAX_TOKENS_MAX_TOKENS;
        g->max_tokens = (int32_t)i;
      } else if (id == OPT_TOP_K) {
        g->_top_k_case = VELO__V1__GENERATE_REQUEST___TOP_K_TOP_K;
        g->top_k = (int32_t)i;
      } else {
        g->_repeat_last_n_case = VELO__V1__GENERATE_REQUEST___REPEAT_LAST_N_REPEAT_LAST_N;
        g->repeat_last_n = (int32_t)i;
      }
      break;
    case OPT_TEMPERATURE:
    case OPT_TOP_P:
    case OPT_MIN_P:
    case OPT_REPEAT_PENALTY:
      if (!parse_double(arg, &d)) {
        fprintf(stderr,
                "velo: --%s needs a finite number (the server checks the field's own range), "
                "got '%s'\n",
                name, arg);
        fprintf(stderr, "Try 'velo --help'.\n");
        return 2;
      }
      if (id == OPT_TEMPERATURE) {
        g->_temperature_case = VELO__V1__GENERATE_REQUEST___TEMPERATURE_TEMPERATURE;
        g->temperature = (float)d;
      } else if (id == OPT_TOP_P) {
        g->_top_p_case = VELO__V1__GENERATE_REQUEST___TOP_P_TOP_P;
        g->top_p = (float)d;
      } else if (id == OPT_MIN_P) {
        g->_min_p_case = VELO__V1__GENERATE_REQUEST___MIN_P_MIN_P;
        g->min_p = (float)d;
      } else {
        g->_repeat_penalty_case = VELO__V1__GENERATE_REQUEST___REPEAT_PENALTY_REPEAT_PENALTY;
        g->repeat_penalty = (float)d;
      }
      break;
    case OPT_SEED: {
      uint64_t s;
      if (!parse_u64(arg, &s)) return usage_error("--seed needs an unsigned integer", arg);
      g->_seed_case = VELO__V1__GENERATE_REQUEST___SEED_SEED;
      g->seed = s;
      break;
    }
    case OPT_STOP: {
      if (!*arg) return usage_error("--stop needs a non-empty string", NULL);
      char **s = realloc(o->stops, (o->n_stops + 1) * sizeof *s);
      if (!s) return usage_error("out of memory", NULL);
      o->stops = s;
      o->stops[o->n_stops++] = (char *)arg;
      break;
    }
    case OPT_IGNORE_EOS:
      g->_ignore_eos_case = VELO__V1__GENERATE_REQUEST___IGNORE_EOS_IGNORE_EOS;
      g->ignore_eos = 1;
      break;
    case OPT_NO_SPECIAL: o->no_special = true; break;
    case OPT_COUNTERS: o->counters = true; break;
    default: return usage_error("unknown option", name);
  }
  return 0;
}

/* Parses argv into o.  Returns -1 to go on, or an exit status (help,
 * version, usage error). */
static int parse_args(int argc, char **argv, options *o) {
  Velo__V1__GenerateRequest init = VELO__V1__GENERATE_REQUEST__INIT;
  memset(o, 0, sizeof *o);
  o->gen = init;
  o->server = getenv("VELO_SERVER");
  if (!o->server || !*o->server) o->server = DEFAULT_SERVER;

  /* Options are checked against the command once it is known, so they are
   * collected first: those before the command word ("+": stop there), then
   * the command's own, where arguments and options may come in any order
   * ("-": positional arguments come back as option 1, in order). */
  struct { int id; const char *arg; const char *name; } seen[256];
  size_t n_seen = 0;
  opterr = 0;
  int c, idx;
  while ((c = getopt_long(argc, argv, "+:hc", long_options, &idx)) != -1) {
    if (c == 'h' || c == OPT_HELP) {
      usage(stdout);
      return 0;
    }
    if (c == OPT_VERSION) {
      printf("velo " VELO_VERSION "\n");
      return 0;
    }
    if (c == '?') return usage_error("unknown option", argv[optind - 1]);
    if (c == ':') return usage_error("missing value for", argv[optind - 1]);
    if (n_seen == sizeof seen / sizeof seen[0]) return usage_error("too many options", NULL);
    seen[n_seen].id = c == 'c' ? OPT_COUNTERS : c;
    seen[n_seen].arg = optarg;
    seen[n_seen].name = c == 'c' ? "counters" : long_options[idx].name; /* idx: long options only */
    n_seen++;
  }
  if (optind >= argc) {
    usage(stderr);
    return 2;
  }
  o->cmd = command_of(argv[optind]);
  if (o->cmd == CMD_NONE) return usage_error("unknown command", argv[optind]);
  const char *cmd_name = argv[optind];

  /* The command's own arguments and options, in any order. */
  int sub_argc = argc - optind;
  char **sub_argv = argv + optind;
  const char *positional[8];
  int n_pos = 0;
  optind = 0; /* 0: glibc starts a fresh scan; sub_argv[0] is the command */
  while (true) {
    int before = optind ? optind : 1; /* the element getopt looks at next */
    c = getopt_long(sub_argc, sub_argv, "-:hc", long_options, &idx);
    if (c == -1) break;
    if (c == '?') {
      /* An unknown letter inside a cluster ("-dash") leaves optind on that
       * element; otherwise it has moved past the element. */
      const char *bad = optopt && optind == before && optind < sub_argc ? sub_argv[optind]
                                                                        : sub_argv[optind - 1];
      fprintf(stderr,
              "velo: unknown option '%s' for 'velo %s'; use -- before a name that starts with "
              "'-'\nTry 'velo --help'.\n",
              bad, cmd_name);
      return 2;
    }
    if (c == 'h' || c == OPT_HELP) {
      usage(stdout);
      return 0;
    }
    if (c == OPT_VERSION) {
      printf("velo " VELO_VERSION "\n");
      return 0;
    }
    if (c == '?') return usage_error("unknown option", sub_argv[optind - 1]);
    if (c == ':') return usage_error("missing value for", sub_argv[optind - 1]);
    if (c == 1) { /* a positional argument, in order ("-" mode) */
      if (n_pos == 8) return usage_error("too many arguments", optarg);
      positional[n_pos++] = optarg;
      continue;
    }
    if (n_seen == sizeof seen / sizeof seen[0]) return usage_error("too many options", NULL);
    seen[n_seen].id = c == 'c' ? OPT_COUNTERS : c;
    seen[n_seen].arg = optarg;
    seen[n_seen].name = c == 'c' ? "counters" : long_options[idx].name; /* idx: long options only */
    n_seen++;
  }
  /* "--" ends the options: everything after it is positional. */
  for (int i = optind; i < sub_argc; i++) {
    if (n_pos == 8) return usage_error("too many arguments", sub_argv[i]);
    positional[n_pos++] = sub_argv[i];
  }

  for (size_t i = 0; i < n_seen; i++) {
    if (!(option_commands[seen[i].id - OPT_SERVER] & (1u << o->cmd))) {
      char what[96];
      snprintf(what, sizeof what, "'%s' does not take --%s", cmd_name, seen[i].name);
      return usage_error(what, NULL);
    }
    int rc = apply_option(o, seen[i].id, seen[i].arg, seen[i].name);
    if (rc) return rc;
  }

  bool control = o->cmd == CMD_LOAD || o->cmd == CMD_UNLOAD;
  int want = (o->cmd == CMD_GENERATE || o->cmd == CMD_TOKENIZE || control) ? 1 : 0;
  if (n_pos != want) {
    char what[96];
    snprintf(what, sizeof what, "'%s' takes %s", cmd_name,
             control ? "exactly one argument (the model name)"
             : want  ? "exactly one argument (quote the text)"
                     : "no arguments");
    return usage_error(what, n_pos ? positional[n_pos - 1] : NULL);
  }
  o->text = want ? positional[0] : NULL;
  return -1;
}

/* The timeout of a unary call in milliseconds. */
static long unary_timeout_ms(const options *o) {
  return o->has_timeout ? (long)(o->timeout_s * 1000.0 + 0.5) : DEFAULT_UNARY_TIMEOUT_MS;
}

/* Prints a failed call and returns 1 (the exit status). */
static int report_rpc_error(const options *o, const char *what, const velo_rpc_error *err) {
  fprintf(stderr, "velo: %s failed: %s: %s\n", what, velo_rpc_code_name(err->code), err->message);
  if (err->code == 14 /* UNAVAILABLE */)
    fprintf(stderr, "velo: cannot reach velod at %s; is it running? (--server HOST:PORT)\n",
            o->server);
  else if (err->code == 4 /* DEADLINE_EXCEEDED */)
    fprintf(stderr, "velo: no complete answer from %s in time (--timeout SECONDS)\n", o->server);
  return 1;
}

/* Packs a protobuf-c message into a malloc'd buffer (a zero-length message
 * still gets one).  Out of memory ends the program with status 1. */
static uint8_t *pack_message(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(*len ? *len : 1);
  if (!buf) {
    fprintf(stderr, "velo: out of memory\n");
    exit(1);
  }
  protobuf_c_message_pack(m, buf);
  return buf;
}

/* A ModelInfo's state: "READY" when an older velod sent none (it listed
 * only loaded models). */
static const char *state_of(const Velo__V1__ModelInfo *mi) {
  return mi->state && *mi->state ? mi->state : "READY";
}

/* "-" for an empty column. */
static const char *or_dash(const char *s) { return s && *s ? s : "-"; }

/* Calls ListModels.  Returns the unpacked response (free it with
 * velo__v1__list_models_response__free_unpacked) or NULL after printing
 * why. */
static Velo__V1__ListModelsResponse *list_models(velo_client *c, const options *o) {
  Velo__V1__ListModelsRequest req = VELO__V1__LIST_MODELS_REQUEST__INIT;
  size_t len;
  uint8_t *buf = pack_message(&req.base, &len);
  uint8_t *resp = NULL;
  size_t resp_len = 0;
  velo_rpc_error err;
  int rc = velo_client_unary(c, "/velo.v1.Models/ListModels", buf, len, unary_timeout_ms(o), &resp,
                             &resp_len, &err);
  free(buf);
  if (rc != 0) {
    report_rpc_error(o, "ListModels", &err);
    return NULL;
  }
  Velo__V1__ListModelsResponse *m = velo__v1__list_models_response__unpack(NULL, resp_len, resp);
  free(resp);
  if (!m) fprintf(stderr, "velo: ListModels: the response is not a ListModelsResponse\n");
  return m;
}

/* The model a command uses: --model, else the first READY text-generation
 * model velod lists, else the first READY one.
 * Returns a malloc'd name, or NULL after printing why. */
static char *choose_model(velo_client *c, const options *o) {
  if (o->model) return strdup(o->model);
  Velo__V1__ListModelsResponse *m = list_models(c, o);
  if (!m) return NULL;
  char *name = NULL;
  /* A text-generation model first (generate and tokenize need one). */
  for (int pass = 0; pass < 2 && !name; pass++)
    for (size_t i = 0; i < m->n_models && !name; i++)
      if (strcmp(state_of(m->models[i]), "READY") == 0 &&
          (pass == 1 || strcmp(m->models[i]->task, "text-generation") == 0))
        name = strdup(m->models[i]->name);
  if (!name) fprintf(stderr, "velo: velod at %s serves no models that are READY\n", o->server);
  velo__v1__list_models_response__free_unpacked(m, NULL);
  return name;
}

/* What a Generate stream has told us so far. */
typedef struct gen_state {
  char last_char;  /* last byte printed, '\n' before any */
  bool bad_message;
  char finish_reason[32];
  int32_t prompt_tokens, completion_tokens;
  size_t ids_received;
} gen_state;

/* velo_stream_fn for Generate: prints each chunk of text at once. */
static int on_generate(const uint8_t *msg, size_t len, void *user) {
  gen_state *st = user;
  Velo__V1__GenerateResponse *r = velo__v1__generate_response__unpack(NULL, len, msg);
  if (!r) {
    st->bad_message = true;
    return 1;
  }
  size_t n = strlen(r->text);
  if (n) {
    fwrite(r->text, 1, n, stdout);
    fflush(stdout);
    st->last_char = r->text[n - 1];
  }
  st->ids_received += r->n_token_ids;
  if (r->finish_reason && *r->finish_reason) {
    snprintf(st->finish_reason, sizeof st->finish_reason, "%s", r->finish_reason);
    st->prompt_tokens = r->prompt_tokens;
    st->completion_tokens = r->completion_tokens;
  }
  velo__v1__generate_response__free_unpacked(r, NULL);
  return 0;
}

static int cmd_generate(velo_client *c, options *o) {
  char *model = choose_model(c, o);
  if (!model) return 1;
  Velo__V1__GenerateRequest *req = &o->gen;
  req->model = model;
  req->prompt = (char *)o->text;
  req->n_stop = o->n_stops;
  req->stop = o->stops;
  size_t len;
  uint8_t *buf = pack_message(&req->base, &len);
  gen_state st = {.last_char = '\n'};
  velo_rpc_error err;
  long timeout_ms = o->has_timeout ? (long)(o->timeout_s * 1000.0 + 0.5) : 0;
  int rc = velo_client_stream(c, "/velo.v1.TextGeneration/Generate", buf, len, timeout_ms,
                              on_generate, &st, &err);
  free(buf);
  free(model);
  /* End the printed text with a newline so the shell prompt starts clean. */
  if (st.last_char != '\n') {
    fputc('\n', stdout);
    fflush(stdout);
  }
  if (st.bad_message) {
    fprintf(stderr, "velo: Generate: a response is not a GenerateResponse\n");
    return 1;
  }
  if (rc != 0) return report_rpc_error(o, "Generate", &err);
  if (st.finish_reason[0])
    fprintf(stderr, "[finish_reason=%s prompt_tokens=%d completion_tokens=%d]\n",
            st.finish_reason, (int)st.prompt_tokens, (int)st.completion_tokens);
  else
    fprintf(stderr, "[stream ended without a finish reason; %zu tokens received]\n",
            st.ids_received);
  return 0;
}

/* Prints mi's counters under its row, one indented "name value" line each,
 * the values aligned. */
static void print_counters(const Velo__V1__ModelInfo *mi) {
  int w = 0;
  for (size_t k = 0; k < mi->n_counters; k++)
    if ((int)strlen(mi->counters[k]->name) > w) w = (int)strlen(mi->counters[k]->name);
  for (size_t k = 0; k < mi->n_counters; k++)
    printf("    %-*s  %lld\n", w, mi->counters[k]->name, (long long)mi->counters[k]->value);
}

/* velo models: one aligned row per model (name, state, task, backend,
 * device, context, file); a model that is not READY gets a second,
 * indented line with the reason.  With --counters, each model's engine
 * counters follow its row (print_counters). */
static int cmd_models(velo_client *c, const options *o) {
  Velo__V1__ListModelsResponse *m = list_models(c, o);
  if (!m) return 1;
  const char *head[] = {"NAME", "STATE", "TASK", "BACKEND", "DEVICE", "CONTEXT", "FILE"};
  int w[6];
  for (int k = 0; k < 6; k++) w[k] = (int)strlen(head[k]);
  char ctx[32];
  for (size_t i = 0; i < m->n_models; i++) {
    const Velo__V1__ModelInfo *mi = m->models[i];
    const char *col[5] = {mi->name, state_of(mi), or_dash(mi->task), or_dash(mi->backend),
                          or_dash(mi->device)};
    for (int k = 0; k < 5; k++)
      if ((int)strlen(col[k]) > w[k]) w[k] = (int)strlen(col[k]);
    int n = snprintf(ctx, sizeof ctx, "%lld", (long long)mi->context_length);
    if (n > w[5]) w[5] = n;
  }
  printf("%-*s  %-*s  %-*s  %-*s  %-*s  %*s  %s\n", w[0], head[0], w[1], head[1], w[2], head[2],
         w[3], head[3], w[4], head[4], w[5], head[5], head[6]);
  for (size_t i = 0; i < m->n_models; i++) {
    const Velo__V1__ModelInfo *mi = m->models[i];
    bool loaded = mi->task && *mi->task;
    if (loaded)
      snprintf(ctx, sizeof ctx, "%lld", (long long)mi->context_length);
    else
      snprintf(ctx, sizeof ctx, "-");
    printf("%-*s  %-*s  %-*s  %-*s  %-*s  %*s  %s\n", w[0], mi->name, w[1], state_of(mi), w[2],
           or_dash(mi->task), w[3], or_dash(mi->backend), w[4], or_dash(mi->device), w[5], ctx,
           or_dash(mi->file));
    if (strcmp(state_of(mi), "READY") != 0 && mi->reason && *mi->reason &&
        strcmp(mi->reason, "not loaded") != 0)
      printf("  %s: %s\n", mi->name, mi->reason);
    if (o->counters) print_counters(mi);
  }
  velo__v1__list_models_response__free_unpacked(m, NULL);
  return 0;
}

/* velo load NAME / velo unload NAME: Models/LoadModel or UnloadModel;
 * prints "model NAME loaded" / "unloaded" on success. */
static int cmd_control(velo_client *c, const options *o) {
  bool load = o->cmd == CMD_LOAD;
  Velo__V1__LoadModelRequest lreq = VELO__V1__LOAD_MODEL_REQUEST__INIT;
  Velo__V1__UnloadModelRequest ureq = VELO__V1__UNLOAD_MODEL_REQUEST__INIT;
  lreq.name = ureq.name = (char *)o->text;
  size_t len;
  uint8_t *buf = pack_message(load ? &lreq.base : &ureq.base, &len);
  uint8_t *resp = NULL;
  size_t resp_len = 0;
  velo_rpc_error err;
  long timeout_ms = o->has_timeout ? (long)(o->timeout_s * 1000.0 + 0.5) : DEFAULT_CONTROL_TIMEOUT_MS;
  int rc = velo_client_unary(c, load ? "/velo.v1.Models/LoadModel" : "/velo.v1.Models/UnloadModel",
                             buf, len, timeout_ms, &resp, &resp_len, &err);
  free(buf);
  free(resp);
  if (rc != 0) return report_rpc_error(o, load ? "LoadModel" : "UnloadModel", &err);
  printf("model %s %s\n", o->text, load ? "loaded" : "unloaded");
  return 0;
}

static int cmd_tokenize(velo_client *c, const options *o) {
  char *model = choose_model(c, o);
  if (!model) return 1;
  Velo__V1__TokenizeRequest req = VELO__V1__TOKENIZE_REQUEST__INIT;
  req.model = model;
  req.text = (char *)o->text;
  if (o->no_special) {
    req._add_special_case = VELO__V1__TOKENIZE_REQUEST___ADD_SPECIAL_ADD_SPECIAL;
    req.add_special = 0;
  }
  size_t len;
  uint8_t *buf = pack_message(&req.base, &len);
  uint8_t *resp = NULL;
  size_t resp_len = 0;
  velo_rpc_error err;
  int rc = velo_client_unary(c, "/velo.v1.TextGeneration/Tokenize", buf, len, unary_timeout_ms(o),
                             &resp, &resp_len, &err);
  free(buf);
  free(model);
  if (rc != 0) return report_rpc_error(o, "Tokenize", &err);
  Velo__V1__TokenizeResponse *r = velo__v1__tokenize_response__unpack(NULL, resp_len, resp);
  free(resp);
  if (!r) {
    fprintf(stderr, "velo: Tokenize: the response is not a TokenizeResponse\n");
    return 1;
  }
  for (size_t i = 0; i < r->n_token_ids; i++)
    printf("%s%d", i ? " " : "", (int)r->token_ids[i]);
  printf("\n");
  velo__v1__tokenize_response__free_unpacked(r, NULL);
  return 0;
}

/* Asks grpc.health.v1.Health/Check; exit 0 only when SERVING. */
static int cmd_health(velo_client *c, const options *o) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)(o->service ? o->service : "");
  size_t len;
  uint8_t *buf = pack_message(&req.base, &len);
  uint8_t *resp = NULL;
  size_t resp_len = 0;
  velo_rpc_error err;
  int rc = velo_client_unary(c, "/grpc.health.v1.Health/Check", buf, len, unary_timeout_ms(o),
                             &resp, &resp_len, &err);
  free(buf);
  if (rc != 0) return report_rpc_error(o, "Health/Check", &err);
  Grpc__Health__V1__HealthCheckResponse *r =
      grpc__health__v1__health_check_response__unpack(NULL, resp_len, resp);
  free(resp);
  if (!r) {
    fprintf(stderr, "velo: Health/Check: the response is not a HealthCheckResponse\n");
    return 1;
  }
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
      &grpc__health__v1__health_check_response__serving_status__descriptor, r->status);
  printf("%s\n", v ? v->name : "UNKNOWN");
  int serving = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  grpc__health__v1__health_check_response__free_unpacked(r, NULL);
  return serving ? 0 : 1;
}

int main(int argc, char **argv) {
  options o;
  int rc = parse_args(argc, argv, &o);
  if (rc >= 0) {
    free(o.stops);
    return rc;
  }
  velo_client *c = velo_client_open(o.server);
  if (!c) {
    fprintf(stderr, "velo: cannot open a gRPC channel to %s\n", o.server);
    free(o.stops);
    return 1;
  }
  switch (o.cmd) {
    case CMD_GENERATE: rc = cmd_generate(c, &o); break;
    case CMD_MODELS: rc = cmd_models(c, &o); break;
    case CMD_TOKENIZE: rc = cmd_tokenize(c, &o); break;
    case CMD_HEALTH: rc = cmd_health(c, &o); break;
    case CMD_LOAD:
    case CMD_UNLOAD: rc = cmd_control(c, &o); break;
    case CMD_NONE: rc = 2; break;
  }
  velo_client_close(c);
  free(o.stops);
  return rc;
}
