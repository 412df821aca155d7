/* mod_stapling C shim: the parts of the module that need Apache's C macros.
 * Everything declared `stapling_rs_*` is implemented in Rust (src/apache/). */
#ifndef STAPLING_SHIM_H
#define STAPLING_SHIM_H

#include <httpd.h>
#include <http_config.h>

/* The directive table, referenced by the Rust-owned module struct. */
extern const command_rec stapling_shim_cmds[];

/* Registers every hook; referenced by the Rust-owned module struct. */
void stapling_shim_register_hooks(apr_pool_t *p);

/* ap_log_error with the module's own log index; msg is not a format string. */
void stapling_shim_log(const char *file, int line, int level, apr_status_t status,
                       const server_rec *s, const char *msg, apr_size_t len);

/* 1 if `level` is enabled for this module on server `s` (or the main server). */
int stapling_shim_log_enabled(const server_rec *s, int level);

/* The module index Apache assigned, for config vector lookups. */
int stapling_shim_module_index(void);

/* Rust side. */
const char *stapling_rs_cmd(cmd_parms *cmd, void *dir_config, const char *arg);
int stapling_rs_pre_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp);
int stapling_rs_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp,
                            server_rec *s);
void stapling_rs_child_init(apr_pool_t *pchild, server_rec *s);
int stapling_rs_ocsp_prime(server_rec *s, apr_pool_t *p, const char *id,
                           apr_size_t id_len, const char *pem);
int stapling_rs_ocsp_get_resp(server_rec *s, conn_rec *c, const char *id,
                              apr_size_t id_len, ap_ssl_ocsp_copy_resp *cb,
                              void *userdata);
int stapling_rs_handler(request_rec *r);
int stapling_rs_status_hook(request_rec *r, int flags);

#endif
