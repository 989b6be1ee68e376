//! The OpenSPF test suite for RFC 7208 (release 2014.04, `rfc7208-tests.yml`,
//! the one pyspf and other implementations test against), played through
//! the daemon the way a peer would see it: each scenario's `zonedata`
//! served by the tests' DNS server (SPF-type records copied to TXT where a
//! name has no TXT, as the suite's own driver does), each case sent over
//! SMTP from its `host` (named in a PROXY header), with its HELO and MAIL
//! FROM, and the result read from the delivered message's
//! Authentication-Results (`spf=… smtp.mailfrom=`; for `<>` that is
//! `postmaster@HELO`, RFC 7208 §2.4). The suite's `explanation` checks
//! cannot be seen there and are not made.
//!
//! The suite is not copied into this repository: the test takes it from
//! pyspf's source distribution on PyPI (`pip download pyspf==2.0.14`),
//! once, into the target directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use finaldot_e2e::dns::{rtype, DnsServer, Record};
use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(60);

/// The pyspf release whose source distribution carries the suite.
const PYSPF: &str = "pyspf==2.0.14";

/// Cases that do not give the suite's result yet, by name; each is a
/// known defect of the SPF implementation (issue 28). The test fails if
/// any other case fails, or if one of these passes (then take it off).
const KNOWN_FAILURES: &[&str] = &[];

/// The suite as JSON: a list of scenarios `{description, zonedata, tests}`.
fn suite() -> serde_json::Value {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rfc7208");
    let yml = dir.join("rfc7208-tests.yml");
    if !yml.exists() {
        std::fs::create_dir_all(&dir).expect("mkdir");
        let out = python3()
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                PYSPF,
                "-d",
            ])
            .arg(&dir)
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "the RFC 7208 test suite comes from pyspf's source distribution: python3 -m pip download --no-deps --no-binary :all: {PYSPF} -d {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let extract = "import glob, sys, tarfile\n\
            d = sys.argv[1]\n\
            t = tarfile.open(glob.glob(d + '/pyspf-*.tar.gz')[0])\n\
            m = [x for x in t.getmembers() if x.name.endswith('test/rfc7208-tests.yml')][0]\n\
            open(d + '/rfc7208-tests.yml', 'wb').write(t.extractfile(m).read())\n";
        run_python(
            python3(),
            extract,
            &[&dir.to_string_lossy()],
            b"",
            "extracting the suite",
        );
    }
    let to_json = "import json, sys, yaml\n\
        print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1], 'rb')))))\n";
    let out = run_python(
        python_with_yaml(),
        to_json,
        &[&yml.to_string_lossy()],
        b"",
        "reading the suite",
    );
    serde_json::from_slice(&out).expect("suite JSON")
}

/// A Python 3 with PyYAML (Debian's python3-yaml).
fn python_with_yaml() -> std::process::Command {
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = std::process::Command::new(candidate)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return std::process::Command::new(candidate);
        }
    }
    panic!("PyYAML reads the RFC 7208 suite: apt-get install -y python3-yaml (./dev test installs it when run as root)")
}

/// One scenario's zone, as the suite's driver (pyspf's testspf.py) serves
/// it: TXT and SPF values as lists of strings, an SPF record copied to TXT
/// when the name has no TXT, `NONE` for no record, a bare `TIMEOUT` making
/// every type not answered before it time out.
fn zone(zonedata: &serde_json::Value) -> Vec<Record> {
    let mut records = Vec::new();
    let Some(names) = zonedata.as_object() else {
        return records;
    };
    for (name, entries) in names {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let entries = entries.as_array().cloned().unwrap_or_default();
        let strings = |v: &serde_json::Value| -> Vec<String> {
            match v {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect(),
                v => vec![v.as_str().unwrap_or_default().to_string()],
            }
        };
        let has_txt = entries.iter().any(|e| e.get("TXT").is_some());
        let mut here = Vec::new();
        let mut copied = Vec::new();
        let mut answered: Option<Vec<u16>> = None;
        for e in &entries {
            if e.as_str() == Some("TIMEOUT") {
                let types = here.iter().map(|r: &Record| match r {
                    Record::A(..) => rtype::A,
                    Record::Aaaa(..) => rtype::AAAA,
                    Record::Mx(..) => rtype::MX,
                    Record::Ptr(..) => rtype::PTR,
                    Record::Cname(..) => rtype::CNAME,
                    Record::Spf(..) => rtype::SPF,
                    _ => rtype::TXT,
                });
                answered.get_or_insert_with(|| types.collect());
                continue;
            }
            if answered.is_some() {
                continue; // never reached past a TIMEOUT
            }
            let Some((t, v)) = e.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let n = name.clone();
            let record = match t.as_str() {
                "A" => Record::A(n, v.as_str().unwrap_or_default().parse().expect("A")),
                "AAAA" => Record::Aaaa(n, v.as_str().unwrap_or_default().parse().expect("AAAA")),
                "MX" => Record::Mx(
                    n,
                    v[0].as_u64().unwrap_or(0) as u16,
                    v[1].as_str().unwrap_or_default().to_string(),
                ),
                "PTR" => Record::Ptr(n, v.as_str().unwrap_or_default().to_string()),
                "CNAME" => Record::Cname(n, v.as_str().unwrap_or_default().to_string()),
                "TXT" if strings(v) == ["NONE"] => continue,
                "TXT" => Record::TxtStrings(n, strings(v)),
                "SPF" if strings(v) == ["NONE"] => continue,
                "SPF" => {
                    if !has_txt {
                        copied.push(Record::TxtStrings(n.clone(), strings(v)));
                    }
                    Record::Spf(n, strings(v))
                }
                other => panic!("zone type {other} in the suite"),
            };
            here.push(record);
        }
        match answered {
            // The copies come after the TIMEOUT: TXT times out.
            Some(types) => records.push(Record::SilentExcept(name.clone(), types)),
            None => here.extend(copied),
        }
        if here.is_empty() {
            records.push(Record::Empty(name.clone()));
        }
        records.extend(here);
    }
    records
}

/// What happened to one case: the SPF result read from the delivered
/// message, or the front end's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Result(String),
    Refused(String),
}

/// Sends one case: PROXY header naming `host`, EHLO, MAIL, RCPT, DATA.
fn send_case(addr: std::net::SocketAddr, id: &str, case: &serde_json::Value) -> Option<String> {
    let host: std::net::IpAddr = case["host"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .expect("host");
    let proto = if host.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if host.is_ipv4() {
        "192.0.2.25"
    } else {
        "2001:db8::25"
    };
    let mut c = Client::connect_raw(addr);
    c.send(format!("PROXY {proto} {host} {dst} 40000 25\r\n").as_bytes());
    let (code, text) = c.read_reply();
    assert_eq!(code, 220, "{id}: {text}");
    let helo = case["helo"].as_str().unwrap_or_default();
    let from = case["mailfrom"].as_str().unwrap_or_default();
    for line in [format!("EHLO {helo}"), format!("MAIL FROM:<{from}>")] {
        let (code, text) = c.cmd(&line);
        if code != 250 {
            return Some(format!("{line:?}: {}", text.trim_end()));
        }
    }
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.expect("DATA", 354);
    c.send(format!("Subject: {id}\r\n\r\nRFC 7208 suite case {id}\r\n.\r\n").as_bytes());
    let (code, text) = c.read_reply();
    assert_eq!(code, 250, "{id}: {text}");
    let _ = c.cmd("QUIT");
    None
}

/// The MAIL FROM identity's SPF result in a delivered message's
/// Authentication-Results of ours, and its Subject.
fn read_result(text: &str) -> (String, String) {
    let unfolded = text.replace("\n\t", " ").replace("\n ", " ");
    let subject = field_values(&unfolded, "Subject")
        .first()
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let ours = field_values(&unfolded, "Authentication-Results")
        .into_iter()
        .find(|v| v.starts_with("mx.test;"))
        .unwrap_or_else(|| panic!("no Authentication-Results of ours: {text}"));
    let result = ours
        .split(';')
        .map(str::trim)
        .find(|p| p.starts_with("spf=") && p.contains("smtp.mailfrom="))
        .and_then(|p| p.strip_prefix("spf="))
        .and_then(|p| p.split_whitespace().next())
        .unwrap_or_else(|| panic!("no spf= for smtp.mailfrom: {ours}"))
        .to_string();
    (subject, result)
}

/// Plays one scenario through a daemon of its own; what each case gave.
fn play(dir: &Path, n: usize, scenario: &serde_json::Value) -> BTreeMap<String, Seen> {
    let dns = DnsServer::start(zone(&scenario["zonedata"]));
    let sub = dir.join(format!("scenario-{n}"));
    std::fs::create_dir_all(&sub).expect("mkdir");
    let mail = sub.join("mail");
    let cfg = with_dns(&chain_config(&sub, &local_delivery_toml(&mail)), dns.addr)
        .replace(
            "[pipeline]",
            "[smtp.proxy_protocol]\nlisteners = [\"127.0.0.1:0\"]\nfrom = [\"127.0.0.1\"]\n\n[auth]\ntrusted_networks = []\ntimeout_ms = 3000\n\n[pipeline]",
        );
    let d = Daemon::start_with(&sub, &cfg);
    let mut seen = BTreeMap::new();
    let tests = scenario["tests"].as_object().cloned().unwrap_or_default();
    let mut sent = 0;
    for (id, case) in &tests {
        match send_case(d.addr, id, case) {
            Some(refusal) => {
                seen.insert(id.clone(), Seen::Refused(refusal));
            }
            None => sent += 1,
        }
    }
    let files = wait_for_files(&mail.join("alice/Maildir/new"), sent, LONG);
    assert_eq!(files.len(), sent, "{}", d.log());
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let (id, result) = read_result(&text);
        seen.insert(id, Seen::Result(result));
    }
    seen
}

#[test]
fn the_rfc7208_test_suite_gives_its_results_through_the_daemon() {
    let suite = suite();
    let dir = TestDir::new("spf-suite");
    let mut failures = BTreeSet::new();
    let mut report = String::new();
    let (mut total, mut passed, mut refused) = (0, 0, Vec::new());
    for (n, scenario) in suite.as_array().expect("scenarios").iter().enumerate() {
        let seen = play(dir.path(), n, scenario);
        for (id, case) in scenario["tests"].as_object().cloned().unwrap_or_default() {
            total += 1;
            let want: Vec<String> = match &case["result"] {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|r| r.as_str())
                    .map(str::to_string)
                    .collect(),
                r => vec![r.as_str().unwrap_or_default().to_string()],
            };
            match seen.get(&id) {
                Some(Seen::Result(got)) if want.contains(got) => passed += 1,
                Some(Seen::Result(got)) => {
                    failures.insert(id.clone());
                    report.push_str(&format!(
                        "{id}: got {got}, the suite says {want:?} ({})\n",
                        case["spec"]
                    ));
                }
                Some(Seen::Refused(why)) => refused.push(format!("{id} (wants {want:?}): {why}")),
                None => panic!("{id}: no result"),
            }
        }
    }
    let known: BTreeSet<String> = KNOWN_FAILURES.iter().map(|s| s.to_string()).collect();
    println!("RFC 7208 suite through the daemon: {passed} of {} reachable cases give the suite's result ({total} cases, {} refused by the SMTP front end before SPF runs)", total - refused.len(), refused.len());
    println!("refused before SPF: {refused:#?}");
    print!("{report}");
    let new: Vec<_> = failures.difference(&known).collect();
    let fixed: Vec<_> = known.difference(&failures).collect();
    assert!(
        new.is_empty(),
        "cases that fail and are not known failures: {new:?}\n{report}"
    );
    assert!(
        fixed.is_empty(),
        "known failures that now pass (take them off KNOWN_FAILURES): {fixed:?}"
    );
}
