//! Finds the Apache and APR headers, generates the FFI bindings and builds the C shim.
//!
//! Header locations come from `apxs -q INCLUDEDIR` and `apr-1-config --includedir`,
//! overridable with `APACHE_INCLUDE_DIR` and `APR_INCLUDE_DIR`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn query(tool_env: &str, default_tool: &str, args: &[&str]) -> Option<String> {
    let tool = env::var(tool_env).unwrap_or_else(|_| default_tool.to_string());
    let out = Command::new(&tool).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn include_dir(var: &str, tool_env: &str, tool: &str, args: &[&str]) -> String {
    println!("cargo:rerun-if-env-changed={var}");
    println!("cargo:rerun-if-env-changed={tool_env}");
    env::var(var).ok().or_else(|| query(tool_env, tool, args)).unwrap_or_else(|| {
        panic!("cannot find headers: set {var}, or install apache2-dev so that `{tool} {}` works", args.join(" "))
    })
}

fn main() {
    let apache = include_dir("APACHE_INCLUDE_DIR", "APXS", "apxs", &["-q", "INCLUDEDIR"]);
    let apr = include_dir("APR_INCLUDE_DIR", "APR_CONFIG", "apr-1-config", &["--includedir"]);
    let defines = ["-DLINUX", "-D_REENTRANT", "-D_GNU_SOURCE"];
    let clang_args: Vec<String> =
        [format!("-I{apache}"), format!("-I{apr}")].into_iter().chain(defines.iter().map(|d| d.to_string())).collect();

    println!("cargo:rerun-if-changed=c-shim/shim.c");
    println!("cargo:rerun-if-changed=c-shim/shim.h");
    println!("cargo:rerun-if-changed=c-shim/wrapper.h");

    let mut shim = cc::Build::new();
    shim.file("c-shim/shim.c").include(&apache).include(&apr).warnings(true).extra_warnings(true);
    for d in defines {
        shim.flag(d);
    }
    shim.compile("stapling_shim");

    let bindings = bindgen::Builder::default()
        .header("c-shim/wrapper.h")
        .clang_args(&clang_args)
        .allowlist_type("module_struct|module|command_rec|cmd_parms|server_rec|conn_rec|process_rec")
        .allowlist_type("unixd_config_rec|apr_pool_t|apr_status_t|ap_ssl_ocsp_copy_resp|apr_array_header_t")
        .allowlist_function("apr_pool_userdata_(get|set)|apr_pool_cleanup_(register|null|kill)")
        .allowlist_function("apr_pstrmemdup|apr_palloc|ap_check_cmd_context|ap_find_linked_module")
        .allowlist_function("ap_mpm_query|ap_server_root_relative|ap_state_query|ap_ssl_add_cert_files|apr_array_make")
        .allowlist_function("ap_ssl_var_lookup")
        // The fleet tier: Apache's socache providers, and a pool per call.
        .allowlist_type("ap_socache_provider_t|ap_socache_instance_t|ap_socache_hints")
        .allowlist_function("ap_lookup_provider|apr_pool_create_unmanaged_ex|apr_pool_destroy")
        .allowlist_var("AP_SOCACHE_FLAG_NOTMPSAFE")
        // The status handler and server-status section: the request and its output.
        .allowlist_type("request_rec")
        .allowlist_function("ap_rwrite|ap_set_content_type")
        .allowlist_var("AP_STATUS_(SHORT|NOTABLE)|M_GET|HTTP_METHOD_NOT_ALLOWED")
        .allowlist_var("ap_unixd_config|ap_top_module|ap_server_conf|ap_conftree")
        .allowlist_var("MODULE_MAGIC_.*|AP_MPMQ_.*|AP_SQ_.*|GLOBAL_ONLY|NOT_IN_.*|APLOG_.*")
        // The hook types, so that each Rust hook function is checked against its C type.
        .allowlist_type("ap_HOOK_(pre_config|post_config|child_init|ssl_ocsp_prime_hook|ssl_ocsp_get_resp_hook|handler|status_hook)_t")
        .allowlist_function("stapling_shim_.*")
        .allowlist_var("stapling_shim_.*")
        .derive_default(false)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on c-shim/wrapper.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("cannot write bindings");

    // Test and bench executables link the library but never call into Apache, whose
    // symbols only exist inside the httpd process.
    println!("cargo:rustc-link-arg-tests=-Wl,--unresolved-symbols=ignore-all");
    println!("cargo:rustc-link-arg-benches=-Wl,--unresolved-symbols=ignore-all");
}
