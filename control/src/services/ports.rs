//! A Service's ports: protocol, port, node port and target port.

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{port_number, protocol, LeftOut, Warn};

/// A service port's `targetPort`.
pub(super) enum Target {
    /// A port number.
    Number(u16),
    /// A container port name, looked up on each pod.
    Name(String),
}

/// One `spec.ports[]` entry, read.
pub(super) struct PortIn {
    pub(super) proto: u8,
    pub(super) port: u16,
    /// Types NodePort and LoadBalancer only.
    pub(super) node_port: Option<u16>,
    pub(super) target: Target,
}

/// `spec.ports[i]` of a Service of type `ty`; `Err`: the port is left out.
pub(super) fn service_port(
    i: usize,
    p: &ServicePort,
    ty: &str,
    warn: &mut Warn,
) -> Result<PortIn, LeftOut> {
    let field = |f: &str| format!("spec.ports[{i}].{f}");
    let Some(proto) = protocol(p.protocol.as_deref()) else {
        let what = match p.protocol.as_deref() {
            Some("SCTP") => "SCTP is not supported".to_string(),
            other => format!("{other:?} is not TCP or UDP"),
        };
        warn(&field("protocol"), format!("{what}; port left out"));
        return Err(LeftOut);
    };
    let Some(port) = port_number(p.port) else {
        warn(
            &field("port"),
            format!("{} is not a port number (1-65535); port left out", p.port),
        );
        return Err(LeftOut);
    };
    let node_port = match (ty, p.node_port) {
        ("ClusterIP", _) | (_, None) => None,
        (_, Some(n)) => match port_number(n) {
            Some(n) => Some(n),
            None => {
                warn(
                    &field("nodePort"),
                    format!("{n} is not a port number (1-65535); port left out"),
                );
                return Err(LeftOut);
            }
        },
    };
    let target = match &p.target_port {
        None => Target::Number(port),
        Some(IntOrString::Int(n)) => match port_number(*n) {
            Some(n) => Target::Number(n),
            None => {
                warn(
                    &field("targetPort"),
                    format!("{n} is not a port number (1-65535); port left out"),
                );
                return Err(LeftOut);
            }
        },
        Some(IntOrString::String(s)) if s.is_empty() => Target::Number(port),
        Some(IntOrString::String(s)) => match s.parse::<i32>().ok().and_then(port_number) {
            Some(n) => Target::Number(n),
            None => Target::Name(s.clone()),
        },
    };
    Ok(PortIn {
        proto,
        port,
        node_port,
        target,
    })
}
