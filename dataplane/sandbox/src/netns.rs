//! Running `ip` and making the sandbox's network namespaces.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::State;

/// Runs `ip` (or any command); the error names the command and what it printed.
pub(crate) fn sh(args: &[&str]) -> Result<String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !o.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

pub(crate) fn netns_add(st: &mut State, name: &str) -> Result<()> {
    sh(&["ip", "netns", "add", name])?;
    st.netns.push(name.to_string());
    st.save()?;
    sh(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}
