//! Reads the parsed configuration tree (`ap_conftree`, as mod_info does) for what
//! the diagnostics need and mod_ssl keeps private: each server's certificate files,
//! and whether any mod_ssl stapling directive was written at all.

use std::collections::HashMap;

use super::ffi;
use super::handles::text;

/// Where a server is defined: the `<VirtualHost>` line (file, line), or `None` for
/// the main server.
pub(super) type Definition = Option<(String, u32)>;

/// The certificate files one server's own section names.
#[derive(Debug, Default, Clone)]
pub(super) struct CertFiles {
    /// `SSLCertificateFile` arguments, in order, as written.
    pub files: Vec<String>,
    /// `SSLCertificateChainFile` is set.
    pub chain_file: bool,
}

/// What the tree holds that the diagnostics read.
#[derive(Debug, Default)]
pub(super) struct Tree {
    /// Certificate files by server definition.
    pub certs: HashMap<Definition, CertFiles>,
    /// mod_ssl's stapling directives written anywhere (`SSLUseStapling`, `SSLStapling*`).
    pub compat_directives: Vec<String>,
}

/// Reads the tree of the configuration being started.
pub(super) fn read() -> Tree {
    let mut tree = Tree::default();
    // SAFETY: ap_conftree is NULL or the root of the tree Apache built for this
    // configuration, in pconf, unchanged during post_config.
    unsafe { walk(ffi::ap_conftree, &None, &mut tree) };
    tree
}

/// # Safety
/// `node` is NULL or a node of the live configuration tree.
unsafe fn walk(mut node: *const ffi::ap_directive_t, section: &Definition, tree: &mut Tree) {
    // SAFETY: each node, its strings and its children belong to the live tree.
    while let Some(d) = unsafe { node.as_ref() } {
        let name = unsafe { text(d.directive) };
        let lname = name.to_ascii_lowercase();
        if lname == "<virtualhost" {
            let at = Some((unsafe { text(d.filename) }, u32::try_from(d.line_num).unwrap_or(0)));
            unsafe { walk(d.first_child, &at, tree) };
        } else if lname == "sslcertificatefile" {
            let arg = unquote(&unsafe { text(d.args) });
            tree.certs.entry(section.clone()).or_default().files.push(arg);
        } else if lname == "sslcertificatechainfile" {
            tree.certs.entry(section.clone()).or_default().chain_file = true;
        } else if lname == "sslusestapling" || lname.starts_with("sslstapling") {
            if !tree.compat_directives.contains(&name) {
                tree.compat_directives.push(name);
            }
        } else if !d.first_child.is_null() {
            // <IfModule>, <IfDefine>, ...: their lines belong to the enclosing server.
            unsafe { walk(d.first_child, section, tree) };
        }
        node = d.next;
    }
}

/// The argument without the quotes the config file may put around it.
fn unquote(arg: &str) -> String {
    let arg = arg.trim();
    arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')).unwrap_or(arg).to_string()
}
