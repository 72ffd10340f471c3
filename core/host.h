/*
 * host.h - builds the velo_host service table that plugins receive.
 *
 * The core provides logging and the GGUF reader; the server provides the
 * response sink (respond) and cancellation query (call_cancelled), because
 * only it knows what a velo_call is.
 */
#ifndef VELO_CORE_HOST_H
#define VELO_CORE_HOST_H

#include "velo/plugin.h"

typedef velo_status (*velo_respond_fn)(velo_call *call, const velo_response *resp);
typedef bool (*velo_call_cancelled_fn)(velo_call *call);

/* Fills *host: ABI version, velo_log, the GGUF reader, and the two call
 * functions (either may be NULL for tools that never submit requests, such
 * as --list-plugins; the table then has stubs that return CANCELLED/true). */
void velo_host_table_init(velo_host *host, velo_respond_fn respond,
                          velo_call_cancelled_fn call_cancelled);

#endif
