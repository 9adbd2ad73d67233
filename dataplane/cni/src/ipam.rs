//! IPAM delegation, as the spec's delegation rules say: the plugin named by `ipam.type` is
//! found in `CNI_PATH` and executed with this plugin's environment (`CNI_COMMAND` set to the
//! operation) and the same configuration on stdin; its error is passed through.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use serde_json::Value;

use crate::spec::{code, CniError, Result};

/// Finds `plugin` in the directories of `CNI_PATH`.
pub fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf> {
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {plugin:?} not found in CNI_PATH"),
                path.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            )
        })
}

/// Runs `plugin` for `command` (ADD, DEL or CHECK) with `stdin`; returns its result (null for
/// an empty output, as DEL and CHECK give).
pub fn exec(plugin: &Path, command: &str, stdin: &[u8]) -> Result<Value> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sys = |e: std::io::Error| {
        CniError::new(
            code::SYSTEM,
            format!("running the IPAM plugin {name}"),
            e.to_string(),
        )
    };
    let mut child = Proc::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(sys)?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).map_err(sys)?;
    }
    let out = child.wait_with_output().map_err(sys)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Option<Value> = if text.trim().is_empty() {
        None
    } else {
        serde_json::from_str(&text).ok()
    };
    if !out.status.success() {
        // Passed through: the delegate's code and message.
        let (c, msg, details) = match &v {
            Some(e) => (
                e.get("code").and_then(Value::as_u64).unwrap_or(999) as u32,
                e.get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                e.get("details")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            None => (
                999,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
                text.trim().to_string(),
            ),
        };
        return Err(CniError::new(
            c,
            format!("IPAM plugin {name} {command} failed: {msg}"),
            details,
        ));
    }
    match v {
        Some(v) => Ok(v),
        None if text.trim().is_empty() => Ok(Value::Null),
        None => Err(CniError::new(
            code::IPAM,
            format!("IPAM plugin {name} {command}: its output is not JSON"),
            text.trim().to_string(),
        )),
    }
}
