//! The spool's record decoders: queue files (read back at every start and by
//! every pipeline claim) and progress records. Any bytes give a value or an
//! error, never a panic; a file that reads back must be self-consistent.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("finaldot-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = finaldot::spool::Progress::decode(data);
    let path = scratch().join("q");
    std::fs::write(&path, data).expect("write scratch file");
    let header = finaldot::spool::read_header(&path);
    let message = finaldot::spool::read_message(&path);
    if let (Ok(h), Ok((h2, m))) = (header, message) {
        assert_eq!(h.message_len, m.len() as u64);
        assert_eq!(h2.message_len, h.message_len);
        assert!(h.message_offset + h.message_len <= data.len() as u64);
    }
});
