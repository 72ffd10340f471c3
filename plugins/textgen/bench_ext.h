/*
 * bench_ext.h - the text-generation plugin's benchmark extension
 * ("velo.bench.v1", velo/bench.h), offered by textgen_get_extension.
 */
#ifndef VELO_TEXTGEN_BENCH_EXT_H
#define VELO_TEXTGEN_BENCH_EXT_H

#include "velo/bench.h"

/* The extension table (static storage; valid while the plugin is loaded). */
extern const velo_bench_ext textgen_bench_ext;

#endif
