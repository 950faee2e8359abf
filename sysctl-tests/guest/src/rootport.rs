//! The PCIe root port the balloon sits behind on q35, read and written
//! through /dev/pci: why FreeBSD 14.2 does not act on QEMU 7.2's
//! `device_del`, and the kick that makes it act.
//!
//! FreeBSD 14.2's pcib writes the slot's first command (Slot Control with
//! HPIE and CCIE) in `pcib_setup_hotplug()` (sys/dev/pci/pci_pci.c, called
//! at line 1690 of `pcib_attach_common()`) and turns the bridge's bus
//! mastering on only at the end of that function (`pci_enable_busmaster()`,
//! line 1740). QEMU completes the command at once and signals Command
//! Completed with an MSI-X message, a memory write the port makes through
//! its bus-master address space (hw/pci/msi.c `msi_send_message()`), which
//! is disabled while bus mastering is off: the message is lost. QEMU
//! interrupts only on a change of its event summary (hw/pci/pcie.c
//! `hotplug_event_notify()`: HPIE and an enabled event bit set), and
//! Command Completed stays set because pcib never saw it, so the Attention
//! Button that `device_del` presses changes nothing and interrupts nobody.
//! pcib, for its part, still waits for that completion
//! (`PCIB_HOTPLUG_CMD_PENDING`; the timeout that would notice is not armed
//! while the kernel is cold, pci_pci.c line 1032) and drops every later
//! slot command (`pcib_pcie_hotplug_command()`, line 1019), the power-off
//! included.
//!
//! The kick: Slot Control's HPIE off, then on again. The summary changes,
//! now with bus mastering on, so QEMU's message arrives; pcib's handler
//! acknowledges what is pending (Command Completed, and the Attention
//! Button if `device_del` came first) and acts on it. From then on the
//! port works: later unplugs and plugs need nothing. A user does the same
//! with `pciconf -w -h`.

use crate::out::Line;
use crate::sys;
use crate::sysctl::get_str;

/// PCI config: capability list pointer, PCI Express capability id.
const PCIR_CAP_PTR: u32 = 0x34;
const PCIY_EXPRESS: u32 = 0x10;
const PCIR_COMMAND: u32 = 0x04;
const PCIM_CMD_BUSMASTEREN: u32 = 0x4;
/// In the PCI Express capability.
const PCIER_SLOT_CTL: u32 = 0x18;
const PCIER_SLOT_STA: u32 = 0x1a;
const PCIEM_SLOT_CTL_HPIE: u32 = 0x20;
const PCIEM_SLOT_CTL_CCIE: u32 = 0x10;
const PCIEM_SLOT_STA_CC: u32 = 0x10;
const PCIEM_SLOT_STA_ABP: u32 = 0x01;

/// The PCI selector (domain, bus, slot, function) in a `%location`
/// ("... dbsf=pci0:1:0:0 ...").
pub fn dbsf(loc: &[u8]) -> Option<[u32; 4]> {
    let at = loc.windows(8).position(|w| w == b"dbsf=pci")? + 8;
    let mut sel = [0u32; 4];
    let mut i = 0;
    for &ch in &loc[at..] {
        match ch {
            b'0'..=b'9' => sel[i] = sel[i] * 10 + u32::from(ch - b'0'),
            b':' if i < 3 => i += 1,
            _ => break,
        }
    }
    (i == 3).then_some(sel)
}

/// `dev.<name>.<unit>.<leaf>` for a device name such as `pcib1`.
fn node_of<'a>(nameunit: &[u8], leaf: &[u8], buf: &'a mut [u8; 64]) -> Option<&'a [u8]> {
    let digits = nameunit.iter().position(u8::is_ascii_digit)?;
    let (name, unit) = nameunit.split_at(digits);
    let mut n = 0;
    for &b in [b"dev." as &[u8], name, b".", unit, b".", leaf]
        .iter()
        .flat_map(|p| p.iter())
    {
        *buf.get_mut(n)? = b;
        n += 1;
    }
    Some(&buf[..n])
}

/// The slot registers at one moment.
#[derive(Clone, Copy)]
pub struct SlotRegs {
    pub command: u32,
    pub control: u32,
    pub status: u32,
}

impl SlotRegs {
    /// Command Completed set and enabled: QEMU's summary is up, so no
    /// further event interrupts until pcib acknowledges it.
    pub fn completion_stuck(&self) -> bool {
        self.status & PCIEM_SLOT_STA_CC != 0
            && self.control & PCIEM_SLOT_CTL_CCIE != 0
            && self.control & PCIEM_SLOT_CTL_HPIE != 0
    }
}

/// The root port: its PCI selector, name and PCI Express capability.
pub struct RootPort {
    sel: [u32; 4],
    name: [u8; 16],
    name_len: usize,
    cap: u32,
}

/// A device name (`pci1`, `pcib2`) copied out of a sysctl buffer, at most
/// 16 bytes, and its length.
fn device_name(s: &[u8]) -> ([u8; 16], usize) {
    let mut name = [0u8; 16];
    let n = s.len().min(16);
    name[..n].copy_from_slice(&s[..n]);
    (name, n)
}

impl RootPort {
    /// The bridge above `virtio_pci0`'s bus (virtio_pci0 → pciN → pcibM).
    pub fn of_balloon() -> Option<RootPort> {
        let mut b = [0u8; 64];
        let bus = get_str(b"dev.virtio_pci.0.%parent", &mut b)?;
        let (bus_name, bl) = device_name(bus);
        let mut nb = [0u8; 64];
        let node = node_of(&bus_name[..bl], b"%parent", &mut nb)?;
        let mut pb = [0u8; 64];
        let (name, name_len) = device_name(get_str(node, &mut pb)?);
        let mut lb = [0u8; 64];
        let node = node_of(&name[..name_len], b"%location", &mut lb)?;
        let mut loc = [0u8; 160];
        let sel = dbsf(get_str(node, &mut loc)?)?;
        // Walk the capability list for PCI Express.
        let mut ptr = sys::pci_config(sel, PCIR_CAP_PTR, 1, None).ok()? as u32;
        for _ in 0..48 {
            if ptr < 0x40 {
                return None;
            }
            let id = sys::pci_config(sel, ptr, 1, None).ok()? as u32;
            if id == PCIY_EXPRESS {
                return Some(RootPort {
                    sel,
                    name,
                    name_len,
                    cap: ptr,
                });
            }
            ptr = sys::pci_config(sel, ptr + 1, 1, None).ok()? as u32;
        }
        None
    }

    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    pub fn regs(&self) -> Option<SlotRegs> {
        let r = |reg, w| {
            sys::pci_config(self.sel, reg, w, None)
                .ok()
                .map(|v| v as u32)
        };
        Some(SlotRegs {
            command: r(PCIR_COMMAND, 2)?,
            control: r(self.cap + PCIER_SLOT_CTL, 2)?,
            status: r(self.cap + PCIER_SLOT_STA, 2)?,
        })
    }

    /// A `#` line with the registers.
    pub fn show(&self, when: &str) -> Option<SlotRegs> {
        let regs = self.regs();
        let mut l = Line::new();
        l.s("# root port ").b(self.name()).s(" ").s(when).s(": ");
        match regs {
            Some(r) => {
                l.s("command ")
                    .x(r.command)
                    .s(if r.command & PCIM_CMD_BUSMASTEREN != 0 {
                        " (bus master on)"
                    } else {
                        " (bus master off)"
                    })
                    .s(", slot control ")
                    .x(r.control)
                    .s(", slot status ")
                    .x(r.status)
                    .s(if r.completion_stuck() {
                        " (Command Completed never acknowledged)"
                    } else {
                        ""
                    })
                    .s(if r.status & PCIEM_SLOT_STA_ABP != 0 {
                        " (Attention Button pressed)"
                    } else {
                        ""
                    })
                    .end();
            }
            None => l.s("unreadable through /dev/pci").end(),
        }
        regs
    }

    /// HPIE off, then on again (see the module comment). True when both
    /// writes went through.
    pub fn kick(&self) -> bool {
        let ctl = self.cap + PCIER_SLOT_CTL;
        let Some(r) = self.regs() else {
            return false;
        };
        let off = sys::pci_config(self.sel, ctl, 2, Some(r.control & !PCIEM_SLOT_CTL_HPIE));
        // pcib's interrupt thread acknowledges and may write its own command.
        sys::sleep_ms(500);
        let Some(r) = self.regs() else {
            return false;
        };
        let on = sys::pci_config(self.sel, ctl, 2, Some(r.control | PCIEM_SLOT_CTL_HPIE));
        sys::sleep_ms(500);
        off.is_ok() && on.is_ok()
    }
}
