//! An uplink's program held across an agent restart.
//!
//! At a stop, the agent leaves the uplink's link attached and pins it ([`Steering::hold`]): its
//! program keeps running with the *held* role, which drops what the dataplane owns (NodePort,
//! VXLAN, masquerade replies) while no socket takes it, instead of passing it to the node's
//! stack, which would answer a NodePort connection with a RST. The next process finds the pin
//! ([`Steering::attach_held`]) but leaves the old program in place until it can itself steer
//! everything the old one did: its own maps start empty, and a frontend missing from them would
//! be passed to the node's stack. Once its first complete table set is installed (the service
//! frontends and masquerade settings in its maps), [`Steering::take_over`] replaces the program
//! in one step (`BPF_LINK_UPDATE`: no frame meets the interface without a program).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libbpf_rs::libbpf_sys;

use crate::{link_create, Attachment, Error, ModePreference, Role, Steering, XdpMode};

/// `VIREO_ROLE_UPLINK_HELD`: an uplink held across a restart ([`Steering::hold`]).
const ROLE_UPLINK_HELD: u32 = 3;

impl Steering {
    /// Leaves an uplink's program attached after this process exits, for the next process
    /// ([`Steering::attach_held`]): its role becomes *held* (what the dataplane owns is dropped
    /// while no socket takes it; the rest still passes), and the link is pinned at `pin` (a
    /// bpffs path) so it outlives the process. A link this process never took over is still
    /// held, by the previous program, and its pin is still there: it is left so.
    pub fn hold(&self, att: Attachment, pin: &Path) -> Result<(), Error> {
        if att.held.is_some() {
            return Ok(());
        }
        let (link, ifindex, mode) = (att.link, att.ifindex, att.mode);
        self.set_iface(
            ifindex,
            att.slot,
            ROLE_UPLINK_HELD,
            self.vxlan_port_of(ifindex),
        )?;
        let path = held_path(pin, mode);
        let _ = std::fs::remove_file(&path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        obj_pin(link.as_raw_fd(), &path).map_err(|e| Error::Attach {
            ifindex,
            reason: format!("pinning the link at {}: {e}", path.display()),
        })
    }

    /// [`Steering::attach`], adopting a link a previous process held at `pin`
    /// ([`Steering::hold`]) if there is one on this interface: the interface's entry is set in
    /// this process's maps, but the held program keeps running until [`Steering::take_over`]
    /// ([`Attachment::is_held`]). A pin whose link is not on `ifindex` any more (the interface
    /// went and came back) is removed. With no pin, an ordinary attach.
    pub fn attach_held(
        &self,
        ifindex: u32,
        slot: u32,
        role: Role,
        vxlan_port: u16,
        pref: ModePreference,
        pin: &Path,
    ) -> Result<Attachment, Error> {
        for mode in [XdpMode::Native, XdpMode::Generic] {
            let path = held_path(pin, mode);
            let Ok(link) = obj_get(&path) else { continue };
            match xdp_link_ifindex(link.as_raw_fd()) {
                Ok(i) if i == ifindex => {
                    self.configure(ifindex, slot, role, vxlan_port)?;
                    return Ok(Attachment {
                        link,
                        ifindex,
                        slot,
                        mode,
                        held: Some(path),
                    });
                }
                other => {
                    tracing::warn!(ifindex, path = %path.display(), link_on = ?other,
                        "a held XDP link not on this interface: removed; attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        self.attach(ifindex, slot, role, vxlan_port, pref)
    }

    /// Replaces the held program of an [`Attachment::is_held`] link by this process's, in one
    /// step, and removes the pin (an attachment not held is returned as it is). If the kernel
    /// refuses the update, the held link is let go and the program attached anew in the same
    /// mode; if that fails too, the interface is left without a program (the node's stack has
    /// its frames) and the error says why.
    pub fn take_over(&self, mut att: Attachment) -> Result<Attachment, Error> {
        let Some(path) = att.held.take() else {
            return Ok(att);
        };
        let _ = std::fs::remove_file(&path);
        let prog_fd = self.skel.progs.vireo_steer.as_fd().as_raw_fd();
        let Err(e) = link_update(att.link.as_raw_fd(), prog_fd) else {
            return Ok(att);
        };
        let Attachment {
            link,
            ifindex,
            slot,
            mode,
            ..
        } = att;
        tracing::warn!(
            ifindex,
            "taking over the held XDP link: {e}; attaching anew"
        );
        // An interface has one program per mode: the old link goes first, at once (its pin's
        // reference is only dropped after an RCU grace period).
        link_detach(&link);
        drop(link);
        let link = link_create(prog_fd, ifindex, mode).map_err(|e| Error::Attach {
            ifindex,
            reason: format!("{}: {e}", mode.as_str()),
        })?;
        Ok(Attachment {
            link,
            ifindex,
            slot,
            mode,
            held: None,
        })
    }
}

/// Where a held link of `mode` is pinned (the mode is in the name: the kernel does not say).
/// bpffs reserves names with a dot (a lookup of one fails with EPERM), so dots in `pin`'s
/// file name (an interface `eth0.100`) become `_` and the mode is joined with `-`.
fn held_path(pin: &Path, mode: XdpMode) -> PathBuf {
    let name = pin
        .file_name()
        .map(|n| n.to_string_lossy().replace('.', "_"))
        .unwrap_or_default();
    pin.with_file_name(format!("{name}-{}", mode.as_str()))
}

fn c_path(p: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn obj_pin(fd: RawFd, p: &Path) -> std::io::Result<()> {
    let c = c_path(p)?;
    // SAFETY: `fd` is an open BPF link of ours and `c` a NUL-terminated path that lives across
    // the call; libbpf returns 0 or a negative errno.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(fd, c.as_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

fn obj_get(p: &Path) -> std::io::Result<OwnedFd> {
    let c = c_path(p)?;
    // SAFETY: `c` is a NUL-terminated path that lives across the call; libbpf returns a new
    // descriptor or a negative errno.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface an XDP link is attached to (0 once its interface is gone); an error for a
/// descriptor that is not an XDP link.
fn xdp_link_ifindex(link_fd: RawFd) -> std::io::Result<u32> {
    // SAFETY: an all-zero `bpf_link_info` is a valid value of this plain C struct.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: `info` and `len` live across the call and `len` is `info`'s size; libbpf returns
    // 0 or a negative errno.
    let rc = unsafe { libbpf_sys::bpf_link_get_info_by_fd(link_fd, &mut info, &mut len) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    if info.type_ != libbpf_sys::BPF_LINK_TYPE_XDP {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidData));
    }
    // SAFETY: the kernel filled the `xdp` member of the union for an XDP link.
    Ok(unsafe { info.__bindgen_anon_1.xdp.ifindex })
}

fn link_update(link_fd: RawFd, prog_fd: RawFd) -> std::io::Result<()> {
    // SAFETY: both descriptors are open; null options are libbpf's defaults (replace whatever
    // program the link has).
    let rc = unsafe { libbpf_sys::bpf_link_update(link_fd, prog_fd, std::ptr::null()) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

/// Detaches an XDP link from its interface now (`BPF_LINK_DETACH`), whatever else still refers
/// to it: a link whose pin was just removed lives on until the kernel frees the pin's inode,
/// after an RCU grace period, and an attach in the meantime would meet `EBUSY`. An error (an
/// old kernel, a link already detached) leaves it to go with its last reference.
pub(crate) fn link_detach(link: &OwnedFd) {
    // SAFETY: `link` is an open descriptor; libbpf returns 0 or a negative errno.
    let rc = unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
    if rc < 0 {
        tracing::debug!(
            "detaching an XDP link: {}",
            std::io::Error::from_raw_os_error(-rc)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_pins_have_no_dot_in_their_name_as_bpffs_requires() {
        let p = held_path(
            Path::new("/run/v.state/bpf/uplink-eth0.100"),
            XdpMode::Native,
        );
        assert_eq!(p, Path::new("/run/v.state/bpf/uplink-eth0_100-native"));
        let g = held_path(Path::new("/x/uplink-eth0"), XdpMode::Generic);
        assert!(
            !g.file_name().unwrap().to_string_lossy().contains('.'),
            "{g:?}"
        );
    }
}
