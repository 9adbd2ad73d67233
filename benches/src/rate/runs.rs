//! The baseline run: the generator and the minimal cross-connect forwarder (the I/O ceiling).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use vireo_control::config::XdpModeConfig;
use vireo_dataplane::fixtures::{udp_from_a, POD_B};
use vireo_dataplane::io::{sys, RingSizes, UmemSpec};
use vireo_xdp::{IfCounters, Steering};

use super::measure::{measure, Rate};
use super::participants::{Bg, Sink};
use super::topology::{enter_netns, Topology};
use super::{
    mode_pref, BUSY_POLL, FRAMES, FWD_CORE, GEN_CORE, HOST_A, HOST_B, PAYLOAD, RING, VXLAN_PORT,
    WARM_UP,
};
use crate::xconnect::{TxGen, TxGenSpec, TxGenStats, Xconnect, XconnectSpec, XconnectStats};

fn gen_spec(ifname: &str) -> TxGenSpec {
    TxGenSpec {
        ifname: ifname.into(),
        queue: 0,
        umem: UmemSpec {
            frames: 4096,
            frame_size: 2048,
            fill_size: 64,
            completion_size: 4096,
            zero_copy: false,
        },
        tx_ring: 2048,
    }
}

pub(super) fn start_generator(
    topo: &Topology,
    limit: Duration,
) -> Result<(Bg<TxGenStats>, Arc<AtomicU64>)> {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let ns = topo.gen.clone();
    let frame = udp_from_a(POD_B.0, 64, &PAYLOAD);
    let bg = Bg::spawn("vireo-bench-gen", move |stop, ready| {
        enter_netns(&ns)?;
        let mut g = TxGen::new(&gen_spec("eth0"), &frame).context("generator socket")?;
        ready();
        Ok(g.run(stop, &[GEN_CORE], limit, &counter)?)
    })?;
    Ok((bg, sent))
}

pub(super) fn run_xconnect(
    topo: &Topology,
    sink: &Sink,
    window: Duration,
    xdp_mode: XdpModeConfig,
    stop: &AtomicBool,
) -> Result<(Rate, (XconnectStats, Vec<IfCounters>))> {
    let limit = WARM_UP + window + Duration::from_secs(30);
    let ns = topo.node.clone();
    let pref = mode_pref(xdp_mode);
    let fwd = Bg::spawn("vireo-bench-xc", move |stop, ready| {
        enter_netns(&ns)?;
        let spec = XconnectSpec {
            a: HOST_A.into(),
            b: HOST_B.into(),
            queue: 0,
            umem: UmemSpec {
                frames: FRAMES,
                frame_size: 2048,
                fill_size: RING,
                completion_size: RING,
                zero_copy: false,
            },
            rings: RingSizes { rx: RING, tx: RING },
            busy_poll: BUSY_POLL,
        };
        let mut x = Xconnect::new(&spec).context("xconnect sockets")?;
        let steering = Steering::load()?;
        let mut links = Vec::new();
        for (slot, (name, fd)) in [HOST_A, HOST_B].into_iter().zip(x.fds()).enumerate() {
            let slot = slot as u32;
            steering.set_socket(slot, 0, fd)?;
            let ifindex = sys::ifindex(name)?;
            links.push(steering.attach(ifindex, slot, vireo_xdp::Role::Pod, VXLAN_PORT, pref)?);
        }
        ready();
        let st = x.run(stop, &[FWD_CORE], limit)?;
        let xdp: Vec<IfCounters> = (0..2)
            .map(|s| steering.counters(s).unwrap_or_default())
            .collect();
        for l in links {
            steering.detach(l);
        }
        Ok((st, xdp))
    })?;
    fwd.wait_ready(Duration::from_secs(15), stop)?;
    let (gen, sent) = start_generator(topo, limit)?;
    gen.wait_ready(Duration::from_secs(15), stop)?;
    let rate = measure(sink, &sent, [gen.task(), fwd.task()], window, stop, || {
        gen.check()?;
        fwd.check()
    })?;
    gen.finish().context("generator")?;
    let (st, xdp) = fwd.finish().context("xconnect")?;
    let busy_loops = st.loops.saturating_sub(st.idle_loops).max(1);
    let rate = Rate {
        avg_batch: (st.rx[0] + st.rx[1]) as f64 / busy_loops as f64,
        ..rate
    };
    Ok((rate, (st, xdp)))
}
