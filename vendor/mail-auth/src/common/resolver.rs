/*
 * SPDX-FileCopyrightText: 2020 Stalwart Labs LLC <hello@stalw.art>
 *
 * SPDX-License-Identifier: Apache-2.0 OR MIT
 */

use super::{parse::TxtRecordParser, verify::DomainKey};
use crate::Instant;
use crate::{
    DnssecStatus, Error, IpLookupStrategy, MX, MessageAuthenticator, RecordSet, ResolverCache, Txt,
    dkim::{Atps, DomainKeyReport},
    dmarc::Dmarc,
    mta_sts::{MtaSts, TlsRpt},
    spf::{Macro, Spf},
};
#[cfg(not(feature = "dns-doh"))]
use hickory_resolver::{
    TokioResolver,
    config::{CLOUDFLARE, GOOGLE, QUAD9, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        ProtoError,
        rr::{Name, RData},
    },
    system_conf::read_system_conf,
};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub struct DnsEntry<T> {
    pub entry: T,
    pub expires: Instant,
}

#[cfg(not(feature = "dns-doh"))]
impl MessageAuthenticator {
    #[cfg(any(feature = "ring", feature = "aws-lc-rs"))]
    pub fn new_cloudflare_tls() -> Result<Self, NetError> {
        Self::new(ResolverConfig::tls(&CLOUDFLARE), ResolverOpts::default())
    }

    pub fn new_cloudflare() -> Result<Self, NetError> {
        Self::new(
            ResolverConfig::udp_and_tcp(&CLOUDFLARE),
            ResolverOpts::default(),
        )
    }

    pub fn new_google() -> Result<Self, NetError> {
        Self::new(
            ResolverConfig::udp_and_tcp(&GOOGLE),
            ResolverOpts::default(),
        )
    }

    pub fn new_quad9() -> Result<Self, NetError> {
        Self::new(ResolverConfig::udp_and_tcp(&QUAD9), ResolverOpts::default())
    }

    #[cfg(any(feature = "ring", feature = "aws-lc-rs"))]
    pub fn new_quad9_tls() -> Result<Self, NetError> {
        Self::new(ResolverConfig::tls(&QUAD9), ResolverOpts::default())
    }

    pub fn new_system_conf() -> Result<Self, NetError> {
        let (config, options) = read_system_conf()?;
        Self::new(config, options)
    }

    pub fn new(config: ResolverConfig, options: ResolverOpts) -> Result<Self, NetError> {
        Ok(MessageAuthenticator(
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(options)
                .build()?,
        ))
    }

    pub fn resolver(&self) -> &TokioResolver {
        &self.0
    }
}

impl MessageAuthenticator {
    pub async fn txt_raw_lookup(&self, key: impl ToFqdn) -> crate::Result<Vec<u8>> {
        let key = key.to_fqdn();

        #[cfg(not(feature = "dns-doh"))]
        let records = {
            let lookup = self
                .0
                .txt_lookup(dns_name(key.as_ref())?)
                .await?;
            let mut records: Vec<Vec<u8>> = Vec::new();
            for record in lookup.answers() {
                if let RData::TXT(txt) = &record.data {
                    let mut entry = Vec::new();
                    for item in &txt.txt_data {
                        entry.extend_from_slice(item);
                    }
                    records.push(entry);
                }
            }
            records
        };

        #[cfg(feature = "dns-doh")]
        let records = self.doh_txt(key.as_ref()).await?.entry;

        Ok(records.into_iter().flatten().collect())
    }

    pub async fn txt_lookup<T: TxtRecordParser + Into<Txt> + UnwrapTxtRecord>(
        &self,
        key: impl ToFqdn,
        cache: Option<&impl ResolverCache<Box<str>, Txt>>,
    ) -> crate::Result<Arc<T>> {
        let key = key.to_fqdn();
        if let Some(value) = cache.as_ref().and_then(|c| c.get::<str>(key.as_ref())) {
            return T::unwrap_txt(value);
        }

        #[cfg(any(test, feature = "test"))]
        if true {
            return mock_resolve(key.as_ref());
        }

        #[cfg(not(feature = "dns-doh"))]
        let (records, expires) = {
            let lookup = self
                .0
                .txt_lookup(dns_name(key.as_ref())?)
                .await?;
            let expires = lookup.valid_until();
            let mut records: Vec<Vec<u8>> = Vec::new();
            for record in lookup.answers() {
                let RData::TXT(txt) = &record.data else {
                    continue;
                };
                match txt.txt_data.len() {
                    0 => {}
                    1 => records.push(txt.txt_data[0].to_vec()),
                    _ => {
                        let mut entry = Vec::with_capacity(255 * txt.txt_data.len());
                        for data in txt.txt_data.iter() {
                            entry.extend_from_slice(data);
                        }
                        records.push(entry);
                    }
                }
            }
            (records, expires)
        };

        #[cfg(feature = "dns-doh")]
        let (records, expires) = {
            let raw = self.doh_txt(key.as_ref()).await?;
            (raw.entry, raw.expires)
        };

        let mut result = Err(Error::Dns(crate::DnsError::InvalidRecordType));
        for record in &records {
            result = T::parse(record);
            if result.is_ok() {
                break;
            }
        }
        // finaldot patch: a record type that must be unique (SPF, RFC 7208
        // §4.5) published twice is a permanent error, not the first one.
        if T::UNIQUE
            && records
                .iter()
                .filter(|r| {
                    !matches!(
                        T::parse(r),
                        Err(Error::Dns(crate::DnsError::InvalidRecordType))
                    )
                })
                .count()
                > 1
        {
            result = Err(Error::ParseError);
        }

        let result: Txt = result.into();

        if let Some(cache) = cache {
            cache.insert(key.into_owned().into_boxed_str(), result.clone(), expires);
        }

        T::unwrap_txt(result)
    }

    pub async fn mx_lookup(
        &self,
        key: impl ToFqdn,
        cache: Option<&impl ResolverCache<Box<str>, RecordSet<MX>>>,
    ) -> crate::Result<RecordSet<MX>> {
        let key = key.to_fqdn();
        if let Some(value) = cache.as_ref().and_then(|c| c.get::<str>(key.as_ref())) {
            return Ok(value);
        }

        #[cfg(any(test, feature = "test"))]
        if true {
            return mock_resolve(key.as_ref());
        }

        #[cfg(not(feature = "dns-doh"))]
        let (mx_records, expires): (Vec<(u16, Box<str>)>, Instant) = {
            let lookup = self
                .0
                .mx_lookup(dns_name(key.as_ref())?)
                .await?;
            let expires = lookup.valid_until();
            let mx_records = lookup
                .answers()
                .iter()
                .filter_map(|r| {
                    let RData::MX(mx) = &r.data else {
                        return None;
                    };
                    Some((
                        mx.preference,
                        raw_name(&mx.exchange.to_lowercase()).into_boxed_str(),
                    ))
                })
                .collect();
            (mx_records, expires)
        };

        #[cfg(feature = "dns-doh")]
        let (mx_records, expires): (Vec<(u16, Box<str>)>, Instant) = {
            let raw = self.doh_mx(key.as_ref()).await?;
            (raw.entry, raw.expires)
        };

        let mut records: Vec<(u16, Vec<Box<str>>)> = Vec::with_capacity(mx_records.len());
        for (preference, exchange) in mx_records {
            if let Some(record) = records.iter_mut().find(|r| r.0 == preference) {
                record.1.push(exchange);
            } else {
                records.push((preference, vec![exchange]));
            }
        }

        records.sort_unstable_by_key(|a| a.0);
        let records: Arc<[MX]> = records
            .into_iter()
            .map(|(preference, exchanges)| MX {
                preference,
                exchanges: exchanges.into_boxed_slice(),
            })
            .collect::<Arc<[MX]>>();
        let records = RecordSet {
            rrset: records,
            dnssec_status: DnssecStatus::Indeterminate,
        };

        if let Some(cache) = cache {
            cache.insert(key.into_owned().into_boxed_str(), records.clone(), expires);
        }

        Ok(records)
    }

    pub async fn ipv4_lookup(
        &self,
        key: impl ToFqdn,
        cache: Option<&impl ResolverCache<Box<str>, RecordSet<Ipv4Addr>>>,
    ) -> crate::Result<RecordSet<Ipv4Addr>> {
        let key = key.to_fqdn();
        if let Some(value) = cache.as_ref().and_then(|c| c.get::<str>(key.as_ref())) {
            return Ok(value);
        }

        let ipv4_lookup = self.ipv4_lookup_raw(key.as_ref()).await?;
        let records = RecordSet {
            rrset: ipv4_lookup.entry,
            dnssec_status: DnssecStatus::Indeterminate,
        };

        if let Some(cache) = cache {
            cache.insert(
                key.into_owned().into_boxed_str(),
                records.clone(),
                ipv4_lookup.expires,
            );
        }

        Ok(records)
    }

    pub async fn ipv4_lookup_raw(&self, key: &str) -> crate::Result<DnsEntry<Arc<[Ipv4Addr]>>> {
        #[cfg(any(test, feature = "test"))]
        if true {
            return mock_resolve(key);
        }

        #[cfg(not(feature = "dns-doh"))]
        {
            let lookup = self
                .0
                .ipv4_lookup(dns_name(key)?)
                .await?;
            let expires = lookup.valid_until();
            let entry: Arc<[Ipv4Addr]> = lookup
                .answers()
                .iter()
                .filter_map(|r| {
                    if let RData::A(a) = &r.data {
                        Some(a.0)
                    } else {
                        None
                    }
                })
                .collect::<Vec<Ipv4Addr>>()
                .into();
            Ok(DnsEntry { entry, expires })
        }

        #[cfg(feature = "dns-doh")]
        self.doh_ipv4(key).await
    }

    pub async fn ipv6_lookup(
        &self,
        key: impl ToFqdn,
        cache: Option<&impl ResolverCache<Box<str>, RecordSet<Ipv6Addr>>>,
    ) -> crate::Result<RecordSet<Ipv6Addr>> {
        let key = key.to_fqdn();
        if let Some(value) = cache.as_ref().and_then(|c| c.get::<str>(key.as_ref())) {
            return Ok(value);
        }

        let ipv6_lookup = self.ipv6_lookup_raw(key.as_ref()).await?;
        let records = RecordSet {
            rrset: ipv6_lookup.entry,
            dnssec_status: DnssecStatus::Indeterminate,
        };

        if let Some(cache) = cache {
            cache.insert(
                key.into_owned().into_boxed_str(),
                records.clone(),
                ipv6_lookup.expires,
            );
        }

        Ok(records)
    }

    pub async fn ipv6_lookup_raw(&self, key: &str) -> crate::Result<DnsEntry<Arc<[Ipv6Addr]>>> {
        #[cfg(any(test, feature = "test"))]
        if true {
            return mock_resolve(key);
        }

        #[cfg(not(feature = "dns-doh"))]
        {
            let lookup = self
                .0
                .ipv6_lookup(dns_name(key)?)
                .await?;
            let expires = lookup.valid_until();
            let entry: Arc<[Ipv6Addr]> = lookup
                .answers()
                .iter()
                .filter_map(|r| {
                    if let RData::AAAA(aaaa) = &r.data {
                        Some(aaaa.0)
                    } else {
                        None
                    }
                })
                .collect::<Vec<Ipv6Addr>>()
                .into();
            Ok(DnsEntry { entry, expires })
        }

        #[cfg(feature = "dns-doh")]
        self.doh_ipv6(key).await
    }

    pub async fn ip_lookup(
        &self,
        key: &str,
        mut strategy: IpLookupStrategy,
        max_results: usize,
        cache_ipv4: Option<&impl ResolverCache<Box<str>, RecordSet<Ipv4Addr>>>,
        cache_ipv6: Option<&impl ResolverCache<Box<str>, RecordSet<Ipv6Addr>>>,
    ) -> crate::Result<Vec<IpAddr>> {
        loop {
            match strategy {
                IpLookupStrategy::Ipv4Only | IpLookupStrategy::Ipv4thenIpv6 => {
                    match (self.ipv4_lookup(key, cache_ipv4).await, strategy) {
                        (Ok(result), _) => {
                            return Ok(result
                                .rrset
                                .iter()
                                .take(max_results)
                                .copied()
                                .map(IpAddr::from)
                                .collect());
                        }
                        (Err(err), IpLookupStrategy::Ipv4Only) => return Err(err),
                        _ => {
                            strategy = IpLookupStrategy::Ipv6Only;
                        }
                    }
                }
                IpLookupStrategy::Ipv6Only | IpLookupStrategy::Ipv6thenIpv4 => {
                    match (self.ipv6_lookup(key, cache_ipv6).await, strategy) {
                        (Ok(result), _) => {
                            return Ok(result
                                .rrset
                                .iter()
                                .take(max_results)
                                .copied()
                                .map(IpAddr::from)
                                .collect());
                        }
                        (Err(err), IpLookupStrategy::Ipv6Only) => return Err(err),
                        _ => {
                            strategy = IpLookupStrategy::Ipv4Only;
                        }
                    }
                }
            }
        }
    }

    pub async fn ptr_lookup(
        &self,
        addr: IpAddr,
        cache: Option<&impl ResolverCache<IpAddr, RecordSet<Box<str>>>>,
    ) -> crate::Result<RecordSet<Box<str>>> {
        if let Some(value) = cache.as_ref().and_then(|c| c.get(&addr)) {
            return Ok(value);
        }

        #[cfg(any(test, feature = "test"))]
        if true {
            return mock_resolve(&addr.to_string());
        }

        #[cfg(not(feature = "dns-doh"))]
        let (entry, expires): (Arc<[Box<str>]>, Instant) = {
            let lookup = self.0.reverse_lookup(addr).await?;
            let expires = lookup.valid_until();
            let entry = lookup
                .answers()
                .iter()
                .filter_map(|r| {
                    let RData::PTR(ptr) = &r.data else {
                        return None;
                    };
                    if !ptr.is_empty() {
                        Some(raw_name(&ptr.to_lowercase()).into_boxed_str())
                    } else {
                        None
                    }
                })
                .collect::<Arc<[Box<str>]>>();
            (entry, expires)
        };

        #[cfg(feature = "dns-doh")]
        let (entry, expires): (Arc<[Box<str>]>, Instant) = {
            let raw = self.doh_ptr(addr).await?;
            (raw.entry, raw.expires)
        };

        let ptr = RecordSet {
            rrset: entry,
            dnssec_status: DnssecStatus::Indeterminate,
        };

        if let Some(cache) = cache {
            cache.insert(addr, ptr.clone(), expires);
        }

        Ok(ptr)
    }

    #[cfg(any(test, feature = "test"))]
    pub async fn exists(
        &self,
        key: impl ToFqdn,
        cache_ipv4: Option<&impl ResolverCache<Box<str>, RecordSet<Ipv4Addr>>>,
        cache_ipv6: Option<&impl ResolverCache<Box<str>, RecordSet<Ipv6Addr>>>,
    ) -> crate::Result<bool> {
        let key = key.to_fqdn();
        match self.ipv4_lookup(key.as_ref(), cache_ipv4).await {
            Ok(_) => Ok(true),
            Err(Error::Dns(crate::DnsError::RecordNotFound(_))) => {
                match self.ipv6_lookup(key.as_ref(), cache_ipv6).await {
                    Ok(_) => Ok(true),
                    Err(Error::Dns(crate::DnsError::RecordNotFound(_))) => Ok(false),
                    Err(err) => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    #[cfg(not(any(test, feature = "test")))]
    pub async fn exists(
        &self,
        key: impl ToFqdn,
        cache_ipv4: Option<&impl ResolverCache<Box<str>, RecordSet<Ipv4Addr>>>,
        cache_ipv6: Option<&impl ResolverCache<Box<str>, RecordSet<Ipv6Addr>>>,
    ) -> crate::Result<bool> {
        let key = key.to_fqdn();

        if cache_ipv4.is_some_and(|c| c.get::<str>(key.as_ref()).is_some())
            || cache_ipv6.is_some_and(|c| c.get::<str>(key.as_ref()).is_some())
        {
            return Ok(true);
        }

        #[cfg(not(feature = "dns-doh"))]
        {
            match self
                .0
                .lookup_ip(dns_name(key.as_ref())?)
                .await
            {
                Ok(result) => Ok(result.as_lookup().answers().iter().any(|r| {
                    matches!(
                        &r.data.record_type(),
                        hickory_resolver::proto::rr::RecordType::A
                            | hickory_resolver::proto::rr::RecordType::AAAA
                    )
                })),
                Err(err) if err.is_no_records_found() => Ok(false),
                Err(err) => Err(err.into()),
            }
        }

        #[cfg(feature = "dns-doh")]
        self.doh_exists(key.as_ref()).await
    }
}

#[cfg(not(feature = "dns-doh"))]
impl From<ProtoError> for Error {
    fn from(_: ProtoError) -> Self {
        Error::ParseError
    }
}

#[cfg(not(feature = "dns-doh"))]
impl From<NetError> for Error {
    fn from(err: NetError) -> Self {
        match &err {
            NetError::Dns(DnsError::NoRecordsFound(no_records)) => {
                Error::Dns(crate::DnsError::RecordNotFound(no_records.response_code))
            }
            _ => Error::Dns(crate::DnsError::Resolver(err.to_string())),
        }
    }
}

impl From<DomainKey> for Txt {
    fn from(v: DomainKey) -> Self {
        Txt::DomainKey(v.into())
    }
}

impl From<DomainKeyReport> for Txt {
    fn from(v: DomainKeyReport) -> Self {
        Txt::DomainKeyReport(v.into())
    }
}

impl From<Atps> for Txt {
    fn from(v: Atps) -> Self {
        Txt::Atps(v.into())
    }
}

impl From<Spf> for Txt {
    fn from(v: Spf) -> Self {
        Txt::Spf(v.into())
    }
}

impl From<Macro> for Txt {
    fn from(v: Macro) -> Self {
        Txt::SpfMacro(v.into())
    }
}

impl From<Dmarc> for Txt {
    fn from(v: Dmarc) -> Self {
        Txt::Dmarc(v.into())
    }
}

impl From<MtaSts> for Txt {
    fn from(v: MtaSts) -> Self {
        Txt::MtaSts(v.into())
    }
}

impl From<TlsRpt> for Txt {
    fn from(v: TlsRpt) -> Self {
        Txt::TlsRpt(v.into())
    }
}

impl<T: Into<Txt>> From<crate::Result<T>> for Txt {
    fn from(v: crate::Result<T>) -> Self {
        match v {
            Ok(v) => v.into(),
            Err(err) => Txt::Error(err),
        }
    }
}

pub trait UnwrapTxtRecord: Sized {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>>;
}

impl UnwrapTxtRecord for DomainKey {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>> {
        match txt {
            Txt::DomainKey(a) => Ok(a),
            Txt::Error(err) => Err(err),
            _ => Err(Error::Io("Invalid record type".to_string())),
        }
    }
}

impl UnwrapTxtRecord for DomainKeyReport {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>> {
        match txt {
            Txt::DomainKeyReport(a) => Ok(a),
            Txt::Error(err) => Err(err),
            _ => Err(Error::Io("Invalid record type".to_string())),
        }
    }
}

impl UnwrapTxtRecord for Atps {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>> {
        match txt {
            Txt::Atps(a) => Ok(a),
            Txt::Error(err) => Err(err),
            _ => Err(Error::Io("Invalid record type".to_string())),
        }
    }
}

impl UnwrapTxtRecord for Spf {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>> {
        match txt {
            Txt::Spf(a) => Ok(a),
            Txt::Error(err) => Err(err),
            _ => Err(Error::Io("Invalid record type".to_string())),
        }
    }
}

impl UnwrapTxtRecord for Macro {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>> {
        match txt {
            Txt::SpfMacro(a) => Ok(a),
            Txt::Error(err) => Err(err),
            _ => Err(Error::Io("Invalid record type".to_string())),
        }
    }
}

impl UnwrapTxtRecord for Dmarc {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>> {
        match txt {
            Txt::Dmarc(a) => Ok(a),
            Txt::Error(err) => Err(err),
            _ => Err(Error::Io("Invalid record type".to_string())),
        }
    }
}

impl UnwrapTxtRecord for MtaSts {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>> {
        match txt {
            Txt::MtaSts(a) => Ok(a),
            Txt::Error(err) => Err(err),
            _ => Err(Error::Io("Invalid record type".to_string())),
        }
    }
}

impl UnwrapTxtRecord for TlsRpt {
    fn unwrap_txt(txt: Txt) -> crate::Result<Arc<Self>> {
        match txt {
            Txt::TlsRpt(a) => Ok(a),
            Txt::Error(err) => Err(err),
            _ => Err(Error::Io("Invalid record type".to_string())),
        }
    }
}

pub trait ToFqdn {
    fn to_fqdn(&self) -> Cow<'_, str>;
}

impl<T: AsRef<str>> ToFqdn for T {
    fn to_fqdn(&self) -> Cow<'_, str> {
        let value = self.as_ref();
        let bytes = value.as_bytes();
        if matches!(bytes.last(), Some(b'.'))
            && !bytes
                .iter()
                .any(|byte| byte.is_ascii_uppercase() || !byte.is_ascii())
        {
            Cow::Borrowed(value)
        } else if value.is_ascii() {
            let mut fqdn = String::with_capacity(value.len() + 1);
            fqdn.push_str(value);
            fqdn.make_ascii_lowercase();
            if !matches!(bytes.last(), Some(b'.')) {
                fqdn.push('.');
            }
            Cow::Owned(fqdn)
        } else {
            let mut fqdn = value.to_lowercase();
            if !value.ends_with('.') {
                fqdn.push('.');
            }
            Cow::Owned(fqdn)
        }
    }
}

pub trait ToReverseName {
    fn to_reverse_name(&self) -> String;
}

impl ToReverseName for IpAddr {
    fn to_reverse_name(&self) -> String {
        match self {
            IpAddr::V4(ip) => {
                let mut segments = String::with_capacity(15);
                let mut buf = [0u8; 3];
                for octet in ip.octets().iter().rev() {
                    if !segments.is_empty() {
                        segments.push('.');
                    }
                    for &digit in decimal_u8(*octet, &mut buf) {
                        segments.push(char::from(digit));
                    }
                }
                segments
            }
            IpAddr::V6(ip) => {
                let mut segments = String::with_capacity(63);
                for segment in ip.segments().iter().rev() {
                    for shift in [0u32, 4, 8, 12] {
                        if !segments.is_empty() {
                            segments.push('.');
                        }
                        segments.push(char::from(hex_nibble((segment >> shift) as u8)));
                    }
                }
                segments
            }
        }
    }
}

#[inline(always)]
pub(crate) fn hex_nibble(value: u8) -> u8 {
    b"0123456789abcdef"[(value & 0x0f) as usize]
}

#[inline(always)]
pub(crate) fn decimal_u8(value: u8, buf: &mut [u8; 3]) -> &[u8] {
    buf[0] = b'0' + value / 100;
    buf[1] = b'0' + (value / 10) % 10;
    buf[2] = b'0' + value % 10;
    let start = if value >= 100 {
        0
    } else if value >= 10 {
        1
    } else {
        2
    };
    &buf[start..]
}

#[cfg(any(test, feature = "test"))]
pub fn mock_resolve<T>(domain: &str) -> crate::Result<T> {
    Err(if domain.contains("_parse_error.") {
        Error::ParseError
    } else if domain.contains("_invalid_record.") {
        Error::Dns(crate::DnsError::InvalidRecordType)
    } else if domain.contains("_dns_error.") {
        Error::Dns(crate::DnsError::Resolver("".to_string()))
    } else {
        Error::Dns(crate::DnsError::RecordNotFound(crate::DNS_RCODE_NXDOMAIN))
    })
}

/// finaldot patch (FINALDOT-PATCHES.md, 8): a name from an answer (an MX
/// exchange, a PTR target) as its labels' octets joined by dots, not
/// hickory's escaped presentation form, so [`dns_name`] looks up the same
/// name again (`foo:bar/baz.example.com` stays that).
fn raw_name(name: &Name) -> String {
    let mut out = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join(".");
    if name.is_fqdn() {
        out.push('.');
    }
    out
}

/// finaldot patch (FINALDOT-PATCHES.md, 8): a name to query. Names an SPF
/// macro or domain-spec builds may hold any printable octet in a label
/// (`foo:bar/baz.example.com`, `%20`, a space: RFC 7208 §7.1, §4.8), which
/// hickory's host-name parsers refuse; such a name is sent as its raw
/// labels (RFC 2181 §11: any octet).
fn dns_name(name: &str) -> Result<Name, ProtoError> {
    Name::from_str_relaxed(name).or_else(|e| {
        let labels = name
            .trim_end_matches('.')
            .split('.')
            .map(|l| hickory_resolver::proto::rr::domain::Label::from_raw_bytes(l.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| e)?;
        let mut name = Name::from_labels(labels)?;
        name.set_fqdn(true);
        Ok(name)
    })
}

#[cfg(test)]
mod test {
    use std::net::IpAddr;

    use crate::common::resolver::ToReverseName;

    #[cfg(not(feature = "dns-doh"))]
    #[test]
    fn invalid_name_is_permanent_error() {
        use super::Name;
        use crate::Error;

        let err = Name::from_str_relaxed(format!("{}.example.org", "a".repeat(64))).unwrap_err();
        assert_eq!(Error::from(err), Error::ParseError);
    }

    #[test]
    fn reverse_lookup_addr() {
        for (addr, expected) in [
            ("1.2.3.4", "4.3.2.1"),
            (
                "2001:db8::cb01",
                "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2",
            ),
            (
                "2a01:4f9:c011:b43c::1",
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.3.4.b.1.1.0.c.9.f.4.0.1.0.a.2",
            ),
        ] {
            assert_eq!(addr.parse::<IpAddr>().unwrap().to_reverse_name(), expected);
        }
    }
}
