//! What `vireo bench` prints: the table of runs, the last runs' details, rounding for JSON.

use serde_json::Value;
use vireo_xdp::IfCounters;

use crate::xconnect::XconnectStats;

use super::measure::{median, Rate, Selection, BATCH_FULL, CONTENDED};
use super::{Opts, FWD_CORE, GEN_CORE, HOST_A, HOST_B, WARM_UP};

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(super) fn table(
    opts: &Opts,
    base: &[Rate],
    agent: &[Rate],
    sel: &Selection,
    ratio: f64,
) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n64-byte UDP, pod A -> pod B on one node; generator on CPU {GEN_CORE}, forwarder on CPU {FWD_CORE}; {}s per run after {}s warm-up\n",
        opts.seconds,
        WARM_UP.as_secs()
    );
    let _ = writeln!(
        o,
        "{:<18} {:>14} {:>15} {:>10} {:>10} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "RUN",
        "GENERATOR Mpps",
        "DELIVERED Mpps",
        "DELIVERED",
        "AVG BATCH",
        "FWD ns/pkt",
        "CPU0 BUSY",
        "CPU1 BUSY",
        "GEN WAIT",
        "FWD WAIT"
    );
    let line = |o: &mut String, name: &str, r: &Rate| {
        let pct = if r.offered > 0.0 {
            100.0 * r.delivered / r.offered
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "{:<18} {:>14.3} {:>15.3} {:>9.1}% {:>10.1} {:>12.0} {:>9.1}% {:>9.1}% {:>8.1}% {:>8.1}%",
            name,
            r.offered / 1e6,
            r.delivered / 1e6,
            pct,
            r.avg_batch,
            r.fwd_ns,
            100.0 * r.busy[0],
            100.0 * r.busy[1],
            100.0 * r.wait[0],
            100.0 * r.wait[1]
        );
    };
    for (i, (x, a)) in base.iter().zip(agent).enumerate() {
        let tag = if base.len() > 1 {
            format!(" #{}", i + 1)
        } else {
            String::new()
        };
        let mark = |r: &Rate| if r.contended() { " *" } else { "" };
        line(&mut o, &format!("xconnect{tag}{}", mark(x)), x);
        line(&mut o, &format!("vireo agent{tag}{}", mark(a)), a);
    }
    let (b, a) = sel.medians(base, agent);
    let what = match (base.len(), sel.rounds.len()) {
        (1, _) => String::new(),
        (n, k) if k == n => "median ".to_owned(),
        (n, k) => format!("median of the {k} uncontended of {n} rounds, "),
    };
    let _ = writeln!(
        o,
        "\n{what}delivered: xconnect (I/O ceiling) {:.3} Mpps, vireo agent {:.3} Mpps; agent / xconnect = {ratio:.3}",
        b / 1e6,
        a / 1e6
    );
    // A forwarder that keeps up sees small batches; one at its limit sees full ones.
    let kept_up = |rs: &[Rate]| {
        let sel_rates = || sel.rounds.iter().map(|&i| &rs[i]);
        median(sel_rates().map(|r| r.delivered / r.offered.max(1.0))) >= 0.97
            && median(sel_rates().map(|r| r.avg_batch)) < BATCH_FULL
    };
    if sel.all && base.iter().chain(agent).any(Rate::contended) {
        let _ = writeln!(
            o,
            "warning: in every round other tasks kept the generator or the forwarder waiting for its core for {:.0}% of a window or more (GEN/FWD WAIT, runs marked *): these figures are low; re-run on an idle machine",
            100.0 * CONTENDED
        );
    } else if base.iter().chain(agent).any(Rate::contended) {
        let _ = writeln!(
            o,
            "rounds with a run marked * (other tasks on the cores for {:.0}% of a window or more) are left out",
            100.0 * CONTENDED
        );
    }
    if kept_up(base) && kept_up(agent) {
        let _ = writeln!(
            o,
            "note: both forwarders kept up with the generator (small RX batches, >=97% delivered): the generator's core, which also carries hA's receive path, is the limit, so the ratio compares rates at the offered load rather than forwarder capacities; FWD ns/pkt compares their cost per frame"
        );
    }
    o
}

pub(super) fn xconnect_detail(x: &XconnectStats, xdp: &[IfCounters]) -> String {
    let mut o = format!(
        "\nxconnect (last run): rx {} tx {} tx_ring_full {} idle loops {:.1}%\n",
        x.rx[0] + x.rx[1],
        x.tx[0] + x.tx[1],
        x.tx_full[0] + x.tx_full[1],
        100.0 * x.idle_loops as f64 / x.loops.max(1) as f64
    );
    for (name, c) in [HOST_A, HOST_B].iter().zip(xdp) {
        o.push_str(&format!(
            "  XDP on {name}: steered {} no_socket {}\n",
            c.steered, c.no_socket
        ));
    }
    o
}

pub(super) fn agent_detail(status: &Value) -> String {
    let c = &status["counters"];
    let drops: Vec<String> = c["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let mut o = format!(
        "agent (last run): rx {} tx {} batches {} drops [{}]\n",
        c["rx"],
        c["tx"],
        c["batches"],
        drops.join(" ")
    );
    for i in status["interfaces"].as_array().into_iter().flatten() {
        o.push_str(&format!(
            "  XDP on {}: steered {} no_socket {}\n",
            i["name"].as_str().unwrap_or("?"),
            i["xdp"]["steered"],
            i["xdp"]["no_socket"]
        ));
    }
    o
}
