/* Headers that bindgen reads. Keep in step with build.rs's allowlist. */
#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_main.h>
#include <http_ssl.h>
#include <http_protocol.h>
#include <mod_status.h>
#include <ap_mpm.h>
#include <ap_provider.h>
#include <ap_socache.h>
#include <unixd.h>
#include <apr_pools.h>
#include <apr_strings.h>
#include "shim.h"
