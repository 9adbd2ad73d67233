//! The generators (our AF_XDP TX generator, testpmd txonly) and the `vireo-plain` run: the
//! minimal cross-connect forwarder (the I/O ceiling).

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use vireo_control::config::format_mac;
use vireo_dataplane::fixtures::{udp_from_a, POD_A, POD_B};
use vireo_dataplane::io::{sys, RingSizes, UmemSpec};
use vireo_xdp::{IfCounters, Steering};

use super::measure::{measure, Rate, Task};
use super::participants::Bg;
use super::testpmd::{Mode, TestPmd};
use super::topology::{enter_netns, Topology};
use super::{
    mode_pref, Ctx, BUSY_POLL, FRAMES, FWD_CORE, GEN_CORE, HOST_A, HOST_B, PAYLOAD, RING,
    VXLAN_PORT, WARM_UP,
};
use crate::xconnect::{TxGen, TxGenSpec, TxGenStats, Xconnect, XconnectSpec};

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

/// Which generator drives a run.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum GenKind {
    /// Our AF_XDP TX generator: 64-byte frames, one flow.
    AfXdp,
    /// Our AF_XDP TX generator sending the other node's VXLAN (64-byte inner frames, one
    /// flow), which testpmd cannot build.
    Vxlan,
    /// `dpdk-testpmd` txonly.
    TestPmd { frame: u32, multi_flow: bool },
}

/// A started generator.
pub(super) enum Generator {
    AfXdp(Bg<TxGenStats>, Arc<AtomicU64>),
    Pmd(TestPmd, Arc<AtomicU64>),
}

impl Generator {
    /// Starts the generator in the gen namespace on the generator core, sending to `dst`, and
    /// waits until it sends.
    pub(super) fn start(ctx: &Ctx, kind: &GenKind, dst: Ipv4Addr, limit: Duration) -> Result<Self> {
        match kind {
            GenKind::AfXdp => Self::start_frame(ctx, udp_from_a(dst, 64, &PAYLOAD), limit),
            GenKind::Vxlan => anyhow::bail!("the VXLAN generator needs its frame: start_frame"),
            GenKind::TestPmd { frame, multi_flow } => {
                let huge = ctx
                    .huge
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("no hugepages for dpdk-testpmd"))?;
                let mode = Mode::TxOnly {
                    iface: "eth0".into(),
                    frame: *frame,
                    multi_flow: *multi_flow,
                    src: POD_A.0,
                    dst,
                    peer_mac: format_mac(&POD_A.3),
                };
                let prefix = format!("{}gen", ctx.prefix);
                let log = ctx.topo.dir.join("testpmd-gen.log");
                let mut p = TestPmd::start(
                    "testpmd txonly",
                    &ctx.topo.gen,
                    &mode,
                    GEN_CORE,
                    &prefix,
                    huge,
                    &log,
                )?;
                p.wait_ready(Duration::from_secs(20), ctx.stop)?;
                Ok(Generator::Pmd(p, Arc::new(AtomicU64::new(0))))
            }
        }
    }

    /// Our AF_XDP generator sending `frame` over and over.
    pub(super) fn start_frame(ctx: &Ctx, frame: Vec<u8>, limit: Duration) -> Result<Self> {
        let (bg, sent) = start_generator(ctx.topo, frame, limit)?;
        bg.wait_ready(Duration::from_secs(15), ctx.stop)?;
        Ok(Generator::AfXdp(bg, sent))
    }

    /// Frames sent (0 for testpmd, which reports only at exit).
    pub(super) fn sent(&self) -> Arc<AtomicU64> {
        match self {
            Generator::AfXdp(_, s) | Generator::Pmd(_, s) => s.clone(),
        }
    }

    pub(super) fn task(&self) -> Task {
        match self {
            Generator::AfXdp(b, _) => b.task(),
            Generator::Pmd(p, _) => p.worker(),
        }
    }

    pub(super) fn check(&mut self) -> Result<()> {
        match self {
            Generator::AfXdp(b, _) => b.check(),
            Generator::Pmd(p, _) => p.check(),
        }
    }

    pub(super) fn finish(self) -> Result<()> {
        match self {
            Generator::AfXdp(b, _) => b.finish().map(|_| ()),
            Generator::Pmd(mut p, _) => p.stop(),
        }
    }
}

fn start_generator(
    topo: &Topology,
    frame: Vec<u8>,
    limit: Duration,
) -> Result<(Bg<TxGenStats>, Arc<AtomicU64>)> {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let ns = topo.gen.clone();
    let bg = Bg::spawn("vireo-bench-gen", move |stop, ready| {
        enter_netns(&ns)?;
        let mut g = TxGen::new(&gen_spec("eth0"), &frame).context("generator socket")?;
        ready();
        Ok(g.run(stop, &[GEN_CORE], limit, &counter)?)
    })?;
    Ok((bg, sent))
}

/// `vireo-plain`: the minimal cross-connect forwarder on the DUT core.
pub(super) fn run_xconnect(ctx: &Ctx, gen_kind: &GenKind) -> Result<Rate> {
    let (topo, sink, window, stop) = (ctx.topo, ctx.sink, ctx.window, ctx.stop);
    let limit = WARM_UP + window + Duration::from_secs(30);
    let ns = topo.node.clone();
    let pref = mode_pref(ctx.xdp_mode);
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
    let mut gen = Generator::start(ctx, gen_kind, POD_B.0, limit)?;
    let tasks = [gen.task(), fwd.task()];
    let rate = measure(sink, &gen.sent(), tasks, window, stop, || {
        gen.check()?;
        fwd.check()
    })?;
    gen.finish().context("generator")?;
    let (st, xdp) = fwd.finish().context("xconnect")?;
    tracing::debug!(?st, ?xdp, "xconnect run");
    let busy_loops = st.loops.saturating_sub(st.idle_loops).max(1);
    Ok(Rate {
        avg_batch: (st.rx[0] + st.rx[1]) as f64 / busy_loops as f64,
        ..rate
    })
}
