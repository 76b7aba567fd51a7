//! The virtio-mmio transport (virtio 1.x, register layout version 2),
//! generic over the device behind it.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::guest_fault;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x4859_5045; // "HYPE"

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// The QueueNotify register (the driver writes a queue's index).
pub const QUEUE_NOTIFY: u64 = 0x50;

pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// What a virtio device model implements; the transport owns the queues.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> &[u16];
    /// The device's config space.
    fn config(&self) -> Vec<u8>;
    /// The driver notified queue `index` (already range-checked). Returns
    /// whether used buffers were added. An `Err` marks the device broken.
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, String>;
    /// Back to the power-on state (the driver wrote status 0).
    fn reset(&mut self);
    /// The driver accepted `features` (FEATURES_OK, already checked to be
    /// a subset of [`Self::features`]).
    fn ack_features(&mut self, _features: u64) {}
    /// The driver set DRIVER_OK (the ready queues are valid in guest
    /// memory, already checked): a device whose queues another process
    /// serves hands them over here. An `Err` marks the device broken.
    fn activate(&mut self, _queues: &[Queue], _mem: &GuestMemoryMmap) -> Result<(), String> {
        Ok(())
    }
    /// Interrupt causes raised outside the transport (a vhost-user backend
    /// signalling the irqfd itself), OR-ed into InterruptStatus.
    fn interrupt_status(&self) -> u32 {
        0
    }
    /// What hyper-vmm's event loop waits for on this device's behalf (a
    /// tap's poll events, output to flush, room for input), as a value
    /// that changes whenever that does; while the driver is up, a register
    /// write that changes it kicks the loop so it polls again. 0 for a
    /// device the loop does not serve.
    fn loop_interest(&self) -> u64 {
        0
    }
    /// Whether every queue notify kicks the event loop (even with
    /// [`Self::loop_interest`] unchanged).
    fn wake_on_notify(&self) -> bool {
        false
    }
}

pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    queues: Vec<Queue>,
    mem: GuestMemoryMmap,
    irq: EventFd,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    /// Set after a device error: nothing is processed until reset.
    broken: bool,
    /// Wakes the event loop (see [`VirtioDevice::loop_interest`]).
    kick: Option<Arc<EventFd>>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: GuestMemoryMmap, irq: EventFd) -> Result<Self, String> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&s| Queue::new(s).map_err(|e| format!("queue of {s}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            queues,
            mem,
            irq,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            broken: false,
            kick: None,
        })
    }

    /// The event loop's wake-up eventfd, for a device it serves.
    pub fn set_kick(&mut self, kick: Arc<EventFd>) {
        self.kick = Some(kick);
    }

    fn loop_interest(&self) -> u64 {
        if self.driver_ok() {
            self.device.loop_interest()
        } else {
            0
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn driver_ok(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && !self.broken
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Runs queue `index` if the driver is ready, and interrupts the guest
    /// when used buffers were added.
    pub fn process(&mut self, index: usize) {
        if !self.driver_ok() {
            return;
        }
        let Some(q) = self.queues.get(index) else {
            guest_fault!("notify of queue {index}, device has {}", self.queues.len());
            return;
        };
        if !q.ready() {
            return;
        }
        if !q.is_valid(&self.mem) {
            self.fail(format!("queue {index} addresses or size are invalid"));
            return;
        }
        match self
            .device
            .process_queue(index, &mut self.queues, &self.mem)
        {
            Ok(true) => self.signal_used(index),
            Ok(false) => {}
            Err(e) => self.fail(format!("queue {index}: {e}")),
        }
    }

    fn signal_used(&mut self, index: usize) {
        let notify = match self.queues.get_mut(index) {
            Some(q) => q.needs_notification(&self.mem).unwrap_or(true),
            None => false,
        };
        if notify {
            self.raise(INT_USED_RING);
        }
    }

    fn raise(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        if let Err(e) = self.irq.write(1) {
            tracing::error!("virtio interrupt: {e}");
        }
    }

    fn fail(&mut self, why: String) {
        guest_fault!(
            "virtio device {}: {why}; device needs reset",
            self.device.device_type()
        );
        self.broken = true;
        self.status |= STATUS_NEEDS_RESET;
        self.raise(INT_CONFIG);
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.broken = false;
    }

    /// The transport's registers and queues, for a snapshot (the device's
    /// own state is saved by its owner).
    pub fn save_state(&self) -> crate::snapshot::devices::TransportState {
        crate::snapshot::devices::TransportState {
            device_type: self.device.device_type(),
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            broken: self.broken,
            queues: self.queues.iter().map(|q| q.state()).collect(),
        }
    }

    /// Puts a fresh transport in the state [`Self::save_state`] returned,
    /// checking it first against this device (type, queue count and
    /// sizes, features offered, queue addresses inside guest memory); on
    /// error nothing is changed.
    pub fn restore_state(
        &mut self,
        st: &crate::snapshot::devices::TransportState,
    ) -> Result<(), String> {
        let ty = self.device.device_type();
        if st.device_type != ty {
            return Err(format!("device type {} where a {ty} is", st.device_type));
        }
        let max = self.device.queue_max_sizes();
        if st.queues.len() != max.len() {
            return Err(format!(
                "device {ty}: {} queues, this one has {}",
                st.queues.len(),
                max.len()
            ));
        }
        if st.driver_features & !self.device.features() != 0 {
            return Err(format!(
                "device {ty}: driver features {:#x} beyond the offered {:#x}",
                st.driver_features,
                self.device.features()
            ));
        }
        let mut queues = Vec::with_capacity(max.len());
        for (i, (q, &m)) in st.queues.iter().zip(max).enumerate() {
            if q.max_size != m {
                return Err(format!(
                    "device {ty} queue {i}: max size {} not {m}",
                    q.max_size
                ));
            }
            let queue = Queue::try_from(*q).map_err(|e| format!("device {ty} queue {i}: {e}"))?;
            if queue.ready() && st.status & STATUS_DRIVER_OK != 0 && !queue.is_valid(&self.mem) {
                return Err(format!("device {ty} queue {i}: rings outside guest memory"));
            }
            queues.push(queue);
        }
        self.queues = queues;
        self.queue_sel = st.queue_sel;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.driver_features = st.driver_features;
        self.status = st.status & 0xff;
        self.interrupt_status = st.interrupt_status & (INT_USED_RING | INT_CONFIG);
        self.config_generation = st.config_generation;
        self.broken = st.broken;
        if self.status & STATUS_FEATURES_OK != 0 {
            self.device.ack_features(self.driver_features);
        }
        if self.driver_ok() {
            self.device.activate(&self.queues, &self.mem)?;
        }
        if self.interrupt_status != 0 {
            // The guest has not acknowledged this yet: raise the line again
            // (a spurious interrupt at worst, which drivers expect).
            let _ = self.irq.write(1);
        }
        Ok(())
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            let config = self.device.config();
            for (i, b) in data.iter_mut().enumerate() {
                *b = usize::try_from(offset - 0x100)
                    .ok()
                    .and_then(|o| o.checked_add(i))
                    .and_then(|o| config.get(o).copied())
                    .unwrap_or(0);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_fault!("virtio-mmio read of {} bytes at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        let v = match offset {
            0x00 => MAGIC,
            0x04 => 2,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self
                .selected()
                .map(|q| u32::from(q.max_size()))
                .unwrap_or(0),
            0x44 => self.selected().map(|q| u32::from(q.ready())).unwrap_or(0),
            0x60 => {
                let outside = if self.driver_ok() {
                    self.device.interrupt_status()
                } else {
                    0
                };
                self.interrupt_status | outside
            }
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                guest_fault!("virtio-mmio read of register {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            // No device here has writable config.
            guest_fault!("virtio-mmio config write at {offset:#x}");
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_fault!("virtio-mmio write of {} bytes at {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            guest_fault!("unaligned virtio-mmio write at {offset:#x}");
            return;
        }
        let v = u32::from_le_bytes(bytes);
        // Queue set-up is only legal before DRIVER_OK.
        let setup = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
                if setup && self.status & STATUS_FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => guest_fault!("driver features page {}", self.driver_features_sel),
                    }
                }
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                if !setup {
                    guest_fault!("queue register {offset:#x} written after DRIVER_OK");
                    return;
                }
                let sel = self.queue_sel;
                let Some(q) = self.selected() else {
                    guest_fault!("queue register {offset:#x} for missing queue {sel}");
                    return;
                };
                match offset {
                    0x38 => {
                        let size = u16::try_from(v).unwrap_or(0);
                        if size == 0 || size > q.max_size() || !size.is_power_of_two() {
                            guest_fault!("queue {sel} size {v}");
                        } else {
                            q.set_size(size);
                        }
                    }
                    0x44 => q.set_ready(v == 1),
                    0x80 => q.set_desc_table_address(Some(v), None),
                    0x84 => q.set_desc_table_address(None, Some(v)),
                    0x90 => q.set_avail_ring_address(Some(v), None),
                    0x94 => q.set_avail_ring_address(None, Some(v)),
                    0xa0 => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            QUEUE_NOTIFY => self.process(v as usize),
            0x64 => self.interrupt_status &= !v,
            0x70 => self.set_status(v),
            _ => guest_fault!("virtio-mmio write of register {offset:#x}"),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v & 0xff;
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                guest_fault!(
                    "driver features {:#x} not a subset of {offered:#x} or without VERSION_1",
                    self.driver_features
                );
                v &= !STATUS_FEATURES_OK;
            } else {
                self.device.ack_features(self.driver_features);
            }
        }
        if v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0 {
            let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            if v & ready != ready {
                guest_fault!("DRIVER_OK without ACKNOWLEDGE|DRIVER|FEATURES_OK ({v:#x})");
                v &= !STATUS_DRIVER_OK;
            }
        }
        if v & STATUS_FAILED != 0 {
            tracing::info!(
                "virtio driver gave up on device {}",
                self.device.device_type()
            );
        }
        let activating = v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        self.status = v | (self.status & STATUS_NEEDS_RESET);
        if activating && !self.broken {
            let mem = &self.mem;
            if let Some(i) = self
                .queues
                .iter()
                .position(|q| q.ready() && !q.is_valid(mem))
            {
                self.fail(format!("queue {i} addresses or size are invalid"));
                return;
            }
            if let Err(e) = self.device.activate(&self.queues, &self.mem) {
                self.fail(format!("activation: {e}"));
                return;
            }
        }
        if self.status & STATUS_DRIVER_OK != 0 {
            // Buffers may already be waiting (e.g. console input).
            for i in 0..self.queues.len() {
                self.process(i);
            }
        }
    }

    /// For tests and the event loop: whole-device processing.
    pub fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }
}

/// A transport on the MMIO bus: its page, offset = register. A write that
/// leaves the event loop something new to wait for kicks it.
impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let before = self.loop_interest();
        MmioTransport::write(self, offset, data);
        if let Some(kick) = &self.kick {
            let notify = offset == QUEUE_NOTIFY && self.device.wake_on_notify();
            if notify || self.loop_interest() != before {
                let _ = kick.write(1);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    pub(crate) struct Dummy {
        pub calls: usize,
        pub fail: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn config(&self) -> Vec<u8> {
            vec![1, 2, 3, 4]
        }
        fn process_queue(
            &mut self,
            _: usize,
            _: &mut [Queue],
            _: &GuestMemoryMmap,
        ) -> Result<bool, String> {
            self.calls += 1;
            if self.fail {
                Err("boom".into())
            } else {
                Ok(true)
            }
        }
        fn reset(&mut self) {}
    }

    fn transport(fail: bool) -> (MmioTransport<Dummy>, EventFd) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t =
            MmioTransport::new(Dummy { calls: 0, fail }, mem, irq.try_clone().unwrap()).unwrap();
        (t, irq)
    }

    fn r(t: &mut MmioTransport<Dummy>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport<Dummy>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    pub(crate) fn bring_up(
        t: &mut MmioTransport<impl VirtioDevice>,
        queues: &[(u64, u64, u64, u16)],
    ) {
        let wr = |t: &mut MmioTransport<_>, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        wr(t, 0x70, STATUS_ACKNOWLEDGE);
        wr(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, 0x24, 1);
        wr(t, 0x20, 1);
        wr(
            t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for (i, &(desc, avail, used, size)) in queues.iter().enumerate() {
            wr(t, 0x30, i as u32);
            wr(t, 0x38, u32::from(size));
            wr(t, 0x80, desc as u32);
            wr(t, 0x90, avail as u32);
            wr(t, 0xa0, used as u32);
            wr(t, 0x44, 1);
        }
        wr(
            t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    /// A device the event loop serves: each queue run changes what the
    /// loop waits for.
    struct Served {
        interest: u64,
    }

    impl VirtioDevice for Served {
        fn device_type(&self) -> u32 {
            43
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn config(&self) -> Vec<u8> {
            Vec::new()
        }
        fn process_queue(
            &mut self,
            _: usize,
            _: &mut [Queue],
            _: &GuestMemoryMmap,
        ) -> Result<bool, String> {
            self.interest += 1;
            Ok(false)
        }
        fn reset(&mut self) {}
        fn loop_interest(&self) -> u64 {
            self.interest
        }
    }

    #[test]
    fn on_the_bus_a_write_that_changes_the_loops_interest_kicks_it() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut t = MmioTransport::new(Served { interest: 0 }, mem, irq).unwrap();
        t.set_kick(kick.clone());
        let kicked = || kick.read().is_ok();
        bring_up(&mut t, &[(0x1000, 0x2000, 0x3000, 16)]);
        let _ = kicked();
        let bus_write = |t: &mut MmioTransport<Served>, off: u64, v: u32| {
            BusDevice::write(t, off, &v.to_le_bytes())
        };
        bus_write(&mut t, QUEUE_NOTIFY, 0);
        assert!(kicked(), "the queue ran: the interest changed");
        bus_write(&mut t, 0x64, 0);
        assert!(
            !kicked(),
            "an interrupt ack changes nothing the loop waits for"
        );
        bus_write(&mut t, QUEUE_NOTIFY, 7);
        assert!(!kicked(), "a notify of a missing queue runs nothing");
        bus_write(&mut t, 0x70, 0);
        assert!(kicked(), "a reset: the loop stops waiting on the device");
        let mut b = [0u8; 4];
        BusDevice::read(&mut t, 0, &mut b);
        assert_eq!(u32::from_le_bytes(b), MAGIC);
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport(false);
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 42);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 is bit 32");
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x34), 16);
        let mut cfg = [0u8; 8];
        t.read(0x102, &mut cfg);
        assert_eq!(cfg, [3, 4, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, _) = transport(false);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn notify_is_bounds_checked_and_errors_break_the_device() {
        let (mut t, irq) = transport(false);
        bring_up(&mut t, &[(0x1000, 0x2000, 0x3000, 16)]);
        assert!(t.driver_ok());
        // DRIVER_OK runs every queue once (input may be waiting).
        assert_eq!(t.device().calls, 1);
        let _ = irq.read();
        t.device_mut().calls = 0;
        t.device_mut().fail = true;
        w(&mut t, 0x50, 7); // no such queue
        w(&mut t, 0x50, u32::MAX);
        assert_eq!(t.device().calls, 0);
        w(&mut t, 0x50, 0);
        assert_eq!(t.device().calls, 1);
        assert!(t.is_broken());
        assert_ne!(r(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, 0x60) & INT_CONFIG, 0);
        assert!(irq.read().is_ok());
        w(&mut t, 0x50, 0);
        assert_eq!(t.device().calls, 1, "a broken device is left alone");
        w(&mut t, 0x70, 0);
        assert!(!t.is_broken());
    }

    #[test]
    fn queue_outside_memory_breaks_the_device_without_calling_it() {
        let (mut t, _) = transport(false);
        bring_up(&mut t, &[(0xfff_f000, 0x2000, 0x3000, 16)]);
        w(&mut t, 0x50, 0);
        assert_eq!(t.device().calls, 0);
        assert!(t.is_broken());
    }

    #[test]
    fn garbage_everywhere_does_not_panic() {
        let (mut t, _) = transport(false);
        let mut x: u32 = 0x1234_5678;
        for off in (0..0x200u64).step_by(1) {
            for len in [1usize, 2, 4, 8] {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let bytes = [
                    x as u8,
                    (x >> 8) as u8,
                    (x >> 16) as u8,
                    (x >> 24) as u8,
                    1,
                    2,
                    3,
                    4,
                ];
                t.write(off, &bytes[..len]);
                let mut buf = vec![0u8; len];
                t.read(off, &mut buf);
            }
        }
        // A queue size that is not a power of two, or too big, is refused.
        let (mut t, _) = transport(false);
        w(&mut t, 0x38, 3);
        w(&mut t, 0x38, 1 << 16);
        w(&mut t, 0x30, 0);
        assert_eq!(t.queues_mut()[0].size(), 16);
    }
}
