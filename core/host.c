/*
 * host.c - the velo_host service table handed to every plugin.
 */
#include "host.h"

#include <string.h>

#include "gguf.h"
#include "log.h"

static velo_status no_respond(velo_call *call, const velo_response *resp) {
  (void)call;
  (void)resp;
  return VELO_CANCELLED;
}

static bool no_call_cancelled(velo_call *call) {
  (void)call;
  return true;
}

void velo_host_table_init(velo_host *host, velo_respond_fn respond,
                          velo_call_cancelled_fn call_cancelled) {
  memset(host, 0, sizeof *host);
  host->struct_size = (uint32_t)sizeof *host;
  host->abi_major = VELO_ABI_MAJOR;
  host->abi_minor = VELO_ABI_MINOR;
  host->version = VELO_VERSION;
  host->log = velo_log;
  host->gguf = &velo_gguf_reader;
  host->respond = respond ? respond : no_respond;
  host->call_cancelled = call_cancelled ? call_cancelled : no_call_cancelled;
}
