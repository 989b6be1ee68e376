//! The SMTP command-line parser: any bytes give a command or a reply, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = finaldot::smtp::command::parse(data);
});
