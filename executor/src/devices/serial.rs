//! COM1, for the guest runtime's log and panic messages. Output goes to a
//! bounded in-memory log that the VMM shows when the guest crashes.

use std::io::Write;

use vm_superio::{Serial, Trigger};

use crate::persist::{InvalidState, Persist};

/// Most bytes of guest log kept (the newest ones).
pub const LOG_LIMIT: usize = 16 * 1024;

/// The guest runs without interrupts, so the UART never raises one.
#[derive(Debug)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Keeps the last [`LOG_LIMIT`] bytes written.
#[derive(Debug, Default)]
pub struct BoundedLog(Vec<u8>);

impl Write for BoundedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        if self.0.len() > LOG_LIMIT {
            let cut = self.0.len() - LOG_LIMIT;
            self.0.drain(..cut);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The UART's registers, saved (vm-superio's `SerialState`, with serde).
/// The log is not kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    pub regs: [u8; 9],
}

#[allow(missing_debug_implementations)]
pub struct SerialConsole {
    uart: Serial<NoInterrupt, vm_superio::serial::NoEvents, BoundedLog>,
}

impl SerialConsole {
    pub fn new() -> Self {
        Self {
            uart: Serial::new(NoInterrupt, BoundedLog::default()),
        }
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // Only a failing writer or trigger can fail, and neither does.
        let _ = self.uart.write(offset, value);
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// The guest's log so far, lossily decoded and trimmed.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.uart.writer().0)
            .trim()
            .to_string()
    }
}

impl Persist for SerialConsole {
    type State = SerialState;
    type Args<'a> = ();
    type Error = InvalidState;

    fn save(&mut self) -> Result<SerialState, InvalidState> {
        let s = self.uart.state();
        Ok(SerialState {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
        })
    }

    /// Any register values are harmless (the UART only shapes what the
    /// guest reads back from it); one vm-superio refuses is an error.
    fn restore(_: (), state: &SerialState) -> Result<Self, InvalidState> {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            state.regs;
        let st = vm_superio::serial::SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: Vec::new(),
        };
        match Serial::from_state(
            &st,
            NoInterrupt,
            vm_superio::serial::NoEvents,
            BoundedLog::default(),
        ) {
            Ok(uart) => Ok(Self { uart }),
            Err(e) => Err(InvalidState(format!("the UART state was refused: {e:?}"))),
        }
    }
}

impl Default for SerialConsole {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keeps_the_newest_bytes() {
        let mut s = SerialConsole::new();
        for _ in 0..LOG_LIMIT {
            s.write(0, b'a');
        }
        for b in b"the end" {
            s.write(0, *b);
        }
        let log = s.log();
        assert_eq!(log.len(), LOG_LIMIT);
        assert!(log.ends_with("the end"));
    }

    /// Registers the guest set come back from a saved state; the log
    /// does not.
    #[test]
    fn state_round_trips() {
        let mut s = SerialConsole::new();
        // Scratch, interrupt enable, and the divisor through DLAB.
        s.write(7, 0x5a);
        s.write(1, 0x01);
        s.write(3, 0x80);
        s.write(0, 0x0c);
        s.write(3, 0x03);
        s.write(0, b'x');
        let saved = s.save().unwrap();
        assert_ne!(saved, SerialConsole::new().save().unwrap());
        let mut back = SerialConsole::restore((), &saved).unwrap();
        assert_eq!(back.save().unwrap(), saved);
        assert_eq!(back.read(7), 0x5a);
        assert_eq!(back.read(1), 0x01);
        assert_eq!(back.read(3), 0x03);
        assert_eq!(back.log(), "");
    }
}
