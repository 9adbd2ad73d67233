//! The cases of a round and how each is run: which device under test forwards between hA and
//! hB, which generator drives it, and whose CPU time the cost per packet is.

use std::time::Duration;

use anyhow::{Context, Result};
use vireo_dataplane::fixtures::POD_B;

use super::kernel::{self, CLUSTER_IP};
use super::measure::{measure, Rate, Task};
use super::runs::{GenKind, Generator};
use super::testpmd::{Mode, TestPmd, MULTI_FLOWS};
use super::topology::{run_argv, run_in};
use super::{agent_run, cluster, runs, Ctx, FWD_CORE, HOST_A, HOST_B, WARM_UP};

/// A device under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dut {
    /// `vireo-egress`: the agent as a cluster node, pod A → ClusterIP → pod C on the other
    /// node, egress policy on, out as VXLAN.
    Egress,
    /// `vireo-ingress`: the agent as a cluster node, VXLAN from the other node → decap →
    /// ingress policy → pod B.
    Ingress,
    /// `vireo-pod`: the agent, pod A → pod B on this node (pipeline on).
    Pod,
    /// `vireo-plain`: the cross-connect, the pipeline bypassed.
    Plain,
    /// `testpmd-io`.
    TestPmdIo,
    /// `kernel-xdp-redirect`.
    XdpRedirect,
    /// `kernel-path`.
    KernelPath,
}

impl Dut {
    pub(super) fn name(self) -> &'static str {
        match self {
            Dut::Egress => "vireo-egress",
            Dut::Ingress => "vireo-ingress",
            Dut::Pod => "vireo-pod",
            Dut::Plain => "vireo-plain",
            Dut::TestPmdIo => "testpmd-io",
            Dut::XdpRedirect => "kernel-xdp-redirect",
            Dut::KernelPath => "kernel-path",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Dut::KernelPath | Dut::Egress | Dut::Ingress => "cross-node",
            _ => "same-node",
        }
    }
}

/// One row of the plan: a DUT, a generator, a frame size and a flow count.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Planned {
    pub(super) dut: Dut,
    pub(super) gen: GenKind,
}

impl Planned {
    pub(super) fn name(&self) -> String {
        match self.gen {
            GenKind::AfXdp => format!("{}-afxdp-gen", self.dut.name()),
            GenKind::TestPmd { .. } | GenKind::Vxlan => self.dut.name().to_owned(),
        }
    }

    pub(super) fn frame(&self) -> u32 {
        match self.gen {
            GenKind::AfXdp | GenKind::Vxlan => 64,
            GenKind::TestPmd { frame, .. } => frame,
        }
    }

    pub(super) fn flows(&self) -> u32 {
        match self.gen {
            GenKind::TestPmd {
                multi_flow: true, ..
            } => MULTI_FLOWS,
            _ => 1,
        }
    }

    pub(super) fn path(&self) -> &'static str {
        self.dut.path()
    }
}

/// Every case of one round: the AF_XDP generator cross-check on the plain case, `vireo-ingress`
/// (our VXLAN generator, 64-byte inner frames), then every DUT for every frame size and flow
/// count under testpmd (our generator's 64-byte cases instead when testpmd is missing).
/// `vireo-pod` (pod → pod on one node, a comparator the targets do not name) is left out of
/// `--quick` (`with_pod` false).
pub(super) fn plan(frames: &[u32], multi: &[bool], testpmd: bool, with_pod: bool) -> Vec<Planned> {
    let mut v = vec![
        Planned {
            dut: Dut::Plain,
            gen: GenKind::AfXdp,
        },
        Planned {
            dut: Dut::Ingress,
            gen: GenKind::Vxlan,
        },
    ];
    if !testpmd {
        for dut in [Dut::Pod, Dut::Egress]
            .into_iter()
            .filter(|d| with_pod || *d != Dut::Pod)
        {
            v.push(Planned {
                dut,
                gen: GenKind::AfXdp,
            });
        }
        return v;
    }
    for &frame in frames {
        for &multi_flow in multi {
            for dut in [
                Dut::Egress,
                Dut::Pod,
                Dut::Plain,
                Dut::TestPmdIo,
                Dut::XdpRedirect,
                Dut::KernelPath,
            ]
            .into_iter()
            .filter(|d| with_pod || *d != Dut::Pod)
            {
                v.push(Planned {
                    dut,
                    gen: GenKind::TestPmd { frame, multi_flow },
                });
            }
        }
    }
    v
}

/// Runs one case once.
pub(super) fn run(ctx: &Ctx, p: &Planned) -> Result<Rate> {
    match p.dut {
        Dut::Egress => cluster::run(ctx, cluster::Direction::Egress, &p.gen),
        Dut::Ingress => cluster::run(ctx, cluster::Direction::Ingress, &p.gen),
        Dut::Pod => agent_run::run_agent(ctx, &p.gen),
        Dut::Plain => runs::run_xconnect(ctx, &p.gen),
        Dut::TestPmdIo => run_testpmd_io(ctx, &p.gen),
        Dut::XdpRedirect => with_rps(ctx, || {
            let obj = xdp_redirect_obj(ctx)?;
            run_in(&ctx.topo.node, &kernel::xdp_redirect_attach(&obj))?;
            let r = run_kernel(ctx, &p.gen, POD_B.0);
            let d = run_in(&ctx.topo.node, &kernel::xdp_redirect_detach());
            let r = r?;
            d?;
            Ok(r)
        }),
        Dut::KernelPath => with_rps(ctx, || run_kernel(ctx, &p.gen, CLUSTER_IP)),
    }
}

fn limit(ctx: &Ctx) -> Duration {
    WARM_UP + ctx.window + Duration::from_secs(30)
}

fn run_testpmd_io(ctx: &Ctx, gen_kind: &GenKind) -> Result<Rate> {
    let huge = ctx
        .huge
        .as_deref()
        .context("no hugepages for dpdk-testpmd")?;
    let mode = Mode::Io {
        a: HOST_A.into(),
        b: HOST_B.into(),
    };
    let log = ctx.topo.dir.join("testpmd-io.log");
    let prefix = format!("{}io", ctx.prefix);
    let mut io = TestPmd::start(
        "testpmd io",
        &ctx.topo.node,
        &mode,
        FWD_CORE,
        &prefix,
        huge,
        &log,
    )?;
    io.wait_ready(Duration::from_secs(20), ctx.stop)?;
    let mut gen = Generator::start(ctx, gen_kind, POD_B.0, limit(ctx))?;
    let tasks = [gen.task(), io.worker()];
    let r = measure(ctx.sink, &gen.sent(), tasks, ctx.window, ctx.stop, || {
        gen.check()?;
        io.check()
    })?;
    gen.finish()?;
    io.stop()?;
    Ok(r)
}

/// A kernel DUT: no thread of its own, so its cost is the DUT core's busy time per packet.
fn run_kernel(ctx: &Ctx, gen_kind: &GenKind, dst: std::net::Ipv4Addr) -> Result<Rate> {
    let mut gen = Generator::start(ctx, gen_kind, dst, limit(ctx))?;
    let none = Task { pid: 0, tid: 0 };
    let r = measure(
        ctx.sink,
        &gen.sent(),
        [gen.task(), none],
        ctx.window,
        ctx.stop,
        || gen.check(),
    )?;
    gen.finish()?;
    Ok(Rate {
        fwd_ns: if r.delivered > 0.0 {
            r.busy[1] * 1e9 / r.delivered
        } else {
            f64::NAN
        },
        ..r
    })
}

fn with_rps<T>(ctx: &Ctx, f: impl FnOnce() -> Result<T>) -> Result<T> {
    for c in kernel::rps(Some(FWD_CORE)) {
        run_in(&ctx.topo.node, &c)?;
    }
    let r = f();
    for c in kernel::rps(None) {
        run_in(&ctx.topo.node, &c)?;
    }
    r
}

/// Compiles the redirect program for hB's ifindex (once per run).
fn xdp_redirect_obj(ctx: &Ctx) -> Result<std::path::PathBuf> {
    let obj = ctx.topo.dir.join("xdp_redirect.o");
    if obj.exists() {
        return Ok(obj);
    }
    let src = ctx.topo.dir.join("xdp_redirect.c");
    std::fs::write(&src, kernel::XDP_REDIRECT_C)?;
    let ifindex: u32 = run_in(
        &ctx.topo.node,
        &["cat".into(), format!("/sys/class/net/{HOST_B}/ifindex")],
    )?
    .trim()
    .parse()
    .context("hB's ifindex")?;
    run_argv(&kernel::xdp_redirect_build(&src, &obj, ifindex))
        .context("compiling the XDP redirect program")?;
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_the_cross_check_and_every_dut_per_frame_and_flow() {
        let p = plan(&[64, 1500], &[false, true], true, true);
        assert_eq!(p.len(), 2 + 2 * 2 * 6);
        assert_eq!(p[0].name(), "vireo-plain-afxdp-gen");
        assert_eq!((p[0].frame(), p[0].flows()), (64, 1));
        assert_eq!(p[1].name(), "vireo-ingress");
        assert_eq!((p[1].frame(), p[1].path()), (64, "cross-node"));
        let eg: Vec<_> = p.iter().filter(|x| x.dut == Dut::Egress).collect();
        assert_eq!(eg.len(), 4);
        assert!(eg.iter().all(|x| x.name() == "vireo-egress"));
        let kp: Vec<_> = p.iter().filter(|x| x.dut == Dut::KernelPath).collect();
        assert_eq!(kp.len(), 4);
        assert!(kp
            .iter()
            .any(|x| x.frame() == 1500 && x.flows() == MULTI_FLOWS));
        assert!(p.iter().filter(|x| x.name() == "vireo-plain").count() == 4);
        // --quick leaves vireo-pod out.
        let q = plan(&[64, 1500], &[false], true, false);
        assert!(q.iter().all(|x| x.dut != Dut::Pod));
        assert_eq!(q.len(), 2 + 2 * 5);
        // Without testpmd only our generator's cases run.
        let p = plan(&[64], &[false], false, true);
        assert_eq!(
            p.iter().map(Planned::name).collect::<Vec<_>>(),
            [
                "vireo-plain-afxdp-gen",
                "vireo-ingress",
                "vireo-pod-afxdp-gen",
                "vireo-egress-afxdp-gen"
            ]
        );
    }
}
