//! The host side of the plugin ABI: what a (possibly hostile) plugin hands
//! back is decoded with postcard and then used: a call's result is applied
//! to a message's state, a host request is served (with no grants). Any
//! bytes give a value or an error, never a panic.
#![no_main]

use std::sync::Arc;

use finaldot::plugins::{Body, OpenGrants};
use finaldot_sdk::wire::{
    parse_headers, EnvelopeState, GuestResult, HostRequest, MessageOutput, MessageState, PluginInfo,
    Recipient,
};
use libfuzzer_sys::fuzz_target;

const MESSAGE: &[u8] = b"From: a@b.test\r\nTo: c@localhost\r\nSubject: hi\r\n\r\nbody\r\n";

fuzz_target!(|data: &[u8]| {
    if let Ok(GuestResult::Ok(output)) = postcard::from_bytes::<GuestResult<MessageOutput>>(data) {
        let (headers, _) = parse_headers(MESSAGE);
        let mut state = MessageState {
            envelope: EnvelopeState {
                mail_from: "a@b.test".into(),
                recipients: vec![Recipient::new("c@localhost")],
            },
            headers,
        };
        for change in &output.changes {
            state.apply(change);
        }
        let _ = state.header_bytes();
    }
    let _ = postcard::from_bytes::<GuestResult<PluginInfo>>(data);
    if let Ok(req) = postcard::from_bytes::<HostRequest>(data) {
        let body = Body::Bytes(Arc::from(&b"body\r\n"[..]));
        let _ = OpenGrants::none().handle(&req, &body, 0);
    }
    let _ = parse_headers(data);
});
