//! The plugin's protocol as a runtime sees it, without root: VERSION, and the error objects
//! of bad input (the binary run with the spec's environment and stdin). The end-to-end test
//! with libcni, an agent and host-local is `tests/cni.rs` (package `vireo`); building this test
//! also builds the `vireo-cni` binary it uses.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn run(env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vireo-cni"));
    c.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("running vireo-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

const CONF: &str =
    r#"{"cniVersion":"0.4.0","name":"vireo","type":"vireo-cni","ipam":{"type":"host-local"}}"#;

#[test]
fn version_lists_what_libcni_asks_for() {
    let (rc, v) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["cniVersion"], "1.0.0");
    let got: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        assert!(got.contains(&want), "{v}");
    }
}

#[test]
fn bad_input_gets_the_error_object_and_a_nonzero_exit() {
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "x1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/var/run/netns/vt-does-not-exist"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Env, &str, u64)] = &[
        (&add, "{not json", 6),
        (
            &add,
            r#"{"cniVersion":"0.2.0","name":"v","ipam":{"type":"host-local"}}"#,
            1,
        ),
        (&add, r#"{"cniVersion":"1.0.0","name":"v"}"#, 7),
        (&add[..3], CONF, 4),
        (&[("CNI_COMMAND", "FROB")], CONF, 4),
        (&[], CONF, 4),
        // The netns is checked before anything is made.
        (&add, CONF, 3),
    ];
    for (env, stdin, code) in cases {
        let (rc, v) = run(env, stdin);
        assert_ne!(rc, 0, "{env:?} {stdin}: {v}");
        assert_eq!(v["code"], *code, "{env:?} {stdin}: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
    }
}
