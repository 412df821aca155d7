/* mod_stapling C shim: directive table, hook registration and the log call.
 * These need Apache's C macros; all logic lives in Rust. */
#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <http_main.h>
#include <http_ssl.h>
#include <ap_mmn.h>
#include <mod_status.h>
#include "shim.h"

#if !AP_MODULE_MAGIC_AT_LEAST(20120211, 105)
#error "mod_stapling needs httpd 2.4.48 or later (the ssl_ocsp_* core hooks)"
#endif

/* The module struct itself is a Rust static, so that the cdylib exports it. */
extern module AP_MODULE_DECLARE_DATA stapling_module;
APLOG_USE_MODULE(stapling);

#define TAKE1(name, where, help) AP_INIT_TAKE1(name, stapling_rs_cmd, NULL, where, help)

const command_rec stapling_shim_cmds[] = {
    TAKE1("Stapling", RSRC_CONF, "On|Off: staple OCSP responses for this server (default Off)"),
    TAKE1("StaplingCache", RSRC_CONF, "shared store cap, in SSLStaplingCache syntax, e.g. shmcb:/path(1048576); 8192 to 68719476736 bytes"),
    TAKE1("StaplingStore", RSRC_CONF, "directory that keeps responses across restarts, or 'none'"),
    TAKE1("StaplingResponderTimeout", RSRC_CONF, "seconds to wait for the OCSP responder, 1 to 300 (default 10)"),
    TAKE1("StaplingResponseTimeSkew", RSRC_CONF, "seconds of clock skew tolerated in responses, 0 to 2592000 (default 300)"),
    TAKE1("StaplingResponseMaxAge", RSRC_CONF, "maximum age of a response in seconds, 1 to 2592000, or -1 for no limit (default -1)"),
    TAKE1("StaplingForceURL", RSRC_CONF, "OCSP responder URL that overrides the certificate's AIA"),
    TAKE1("StaplingRenewWindow", RSRC_CONF, "refresh when this much validity is left: 1% to 99%, or 1 to 2592000 seconds (default 50%)"),
    TAKE1("StaplingUseNonce", RSRC_CONF, "On|Off: send a nonce and require it back (default Off)"),
    TAKE1("StaplingStartupWait", RSRC_CONF, "seconds a handshake may wait for a certificate's first response: 0 to 10 (default 1)"),
    TAKE1("StaplingCompatibility", RSRC_CONF, "On|Off: also read mod_ssl's SSLUseStapling/SSLStapling* (default On)"),
    TAKE1("StaplingProxy", RSRC_CONF, "http://[user:password@]host:port: the HTTP proxy for every responder request (default: http_proxy/https_proxy/no_proxy from the environment)"),
    TAKE1("StaplingResponderCAFile", RSRC_CONF, "PEM file of CAs trusted for https:// responders, besides the system's"),
    TAKE1("StaplingResponderRate", RSRC_CONF, "requests a second to one responder host, from the whole server: 0 (no limit) to 10000 (default 20)"),
    TAKE1("StaplingRequestMethod", RSRC_CONF, "auto|get|post: GET for small requests, as RFC 5019 prefers (default auto)"),
    /* Compatibility mode: read mod_ssl's directives, then let mod_ssl read them too. */
    TAKE1("SSLUseStapling", RSRC_CONF, NULL),
    TAKE1("SSLStaplingCache", RSRC_CONF, NULL),
    TAKE1("SSLStaplingResponderTimeout", RSRC_CONF, NULL),
    TAKE1("SSLStaplingResponseTimeSkew", RSRC_CONF, NULL),
    TAKE1("SSLStaplingResponseMaxAge", RSRC_CONF, NULL),
    TAKE1("SSLStaplingForceURL", RSRC_CONF, NULL),
    TAKE1("SSLStaplingStandardCacheTimeout", RSRC_CONF, NULL),
    TAKE1("SSLStaplingErrorCacheTimeout", RSRC_CONF, NULL),
    TAKE1("SSLStaplingReturnResponderErrors", RSRC_CONF, NULL),
    TAKE1("SSLStaplingFakeTryLater", RSRC_CONF, NULL),
    { NULL }
};

void stapling_shim_register_hooks(apr_pool_t *p)
{
    /* Our post_config must see every certificate mod_ssl primed. */
    static const char *const after_ssl[] = { "mod_ssl.c", NULL };
    (void)p;
    ap_hook_pre_config(stapling_rs_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(stapling_rs_post_config, after_ssl, NULL, APR_HOOK_LAST);
    ap_hook_child_init(stapling_rs_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_ssl_ocsp_prime_hook(stapling_rs_ocsp_prime, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_ssl_ocsp_get_resp_hook(stapling_rs_ocsp_get_resp, NULL, NULL, APR_HOOK_MIDDLE);
    /* SetHandler stapling-status, and our section in mod_status's page (an optional
     * hook: registered whether or not mod_status is loaded, run only if it is). */
    ap_hook_handler(stapling_rs_handler, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, stapling_rs_status_hook, NULL, NULL, APR_HOOK_MIDDLE);
}

void stapling_shim_log(const char *file, int line, int level, apr_status_t status,
                       const server_rec *s, const char *msg, apr_size_t len)
{
    /* ap_log_error() with the Rust caller's file and line instead of ours. */
    ap_log_error_(file, line, APLOG_MODULE_INDEX, level, status, s, "%.*s", (int)len, msg);
}

int stapling_shim_log_enabled(const server_rec *s, int level)
{
    if (s == NULL) {
        s = ap_server_conf;
    }
    if (s == NULL) {
        return level <= APLOG_NOTICE;
    }
    return APLOG_IS_LEVEL(s, level);
}

int stapling_shim_module_index(void)
{
    return stapling_module.module_index;
}
