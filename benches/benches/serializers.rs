//! Serializer benchmark, shaped like msm's serializer benchmark: a small
//! session (a few strings), a medium one (a cart of 50 items) and a large one
//! (500 items with nested maps), each encoded and decoded with every
//! serializer along the real path: every attribute value encoded with the
//! serializer, then the attribute map (`encode_attributes`); decoding the
//! reverse (`decode_attributes`, then every value into its type).
//!
//! Run: `cargo bench -p ferrocat-benches --bench serializers`
//!
//! Besides criterion's output it prints one table (serializer x session size:
//! encode ns, decode ns, payload bytes) from simple timing loops in the same
//! run, which is what the default serializer is chosen from.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ferrocat_session::serializer::{Attributes, SerializerError, SerializerKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CartItem {
    sku: String,
    name: String,
    qty: u32,
    price_cents: i64,
    tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CatalogItem {
    sku: String,
    name: String,
    qty: u32,
    price_cents: i64,
    tags: Vec<String>,
    /// option group -> option -> price delta in cents
    options: BTreeMap<String, BTreeMap<String, i32>>,
    /// free-form properties
    props: BTreeMap<String, String>,
}

/// A session as the app holds it (typed attributes).
#[derive(Debug, Clone, PartialEq)]
struct Session {
    user: String,
    locale: String,
    last_login_ms: u64,
    admin: bool,
    cart: Option<Vec<CartItem>>,
    catalog: Option<Vec<CatalogItem>>,
}

fn small() -> Session {
    Session {
        user: "alice.smith@example.com".into(),
        locale: "de-CH".into(),
        last_login_ms: 1_790_000_000_123,
        admin: false,
        cart: None,
        catalog: None,
    }
}

fn cart_item(i: u32) -> CartItem {
    CartItem {
        sku: format!("SKU-{i:06}"),
        name: format!("Product number {i}, blue, size M"),
        qty: 1 + i % 5,
        price_cents: 199 + i64::from(i) * 37,
        tags: vec!["sale".into(), format!("cat-{}", i % 7), "new".into()],
    }
}

fn medium() -> Session {
    Session {
        cart: Some((0..50).map(cart_item).collect()),
        ..small()
    }
}

fn large() -> Session {
    let catalog = (0..500)
        .map(|i| {
            let base = cart_item(i);
            let mut options = BTreeMap::new();
            for g in ["color", "size"] {
                let opts = (0..4i32)
                    .map(|o| (format!("{g}-{o}"), (o - 1) * 50))
                    .collect();
                options.insert(g.to_owned(), opts);
            }
            let props = (0..3)
                .map(|p| (format!("prop{p}"), format!("value {p} of item {i}")))
                .collect();
            CatalogItem {
                sku: base.sku,
                name: base.name,
                qty: base.qty,
                price_cents: base.price_cents,
                tags: base.tags,
                options,
                props,
            }
        })
        .collect();
    Session {
        catalog: Some(catalog),
        ..small()
    }
}

/// The write path: each attribute value, then the attribute map.
fn encode(kind: SerializerKind, s: &Session) -> Result<Vec<u8>, SerializerError> {
    let mut attrs = Attributes::new();
    attrs.insert("user".into(), kind.encode_value(&s.user)?);
    attrs.insert("locale".into(), kind.encode_value(&s.locale)?);
    attrs.insert("lastLogin".into(), kind.encode_value(&s.last_login_ms)?);
    attrs.insert("admin".into(), kind.encode_value(&s.admin)?);
    if let Some(cart) = &s.cart {
        attrs.insert("cart".into(), kind.encode_value(cart)?);
    }
    if let Some(catalog) = &s.catalog {
        attrs.insert("catalog".into(), kind.encode_value(catalog)?);
    }
    kind.encode_attributes(&attrs)
}

/// The read path: the attribute map, then each attribute value.
fn decode(kind: SerializerKind, b: &[u8]) -> Result<Session, SerializerError> {
    let attrs = kind.decode_attributes(b)?;
    let get = |k: &str| {
        attrs.get(k).ok_or(SerializerError::Decode {
            serializer: kind.name(),
            reason: format!("missing {k}"),
        })
    };
    Ok(Session {
        user: kind.decode_value(get("user")?)?,
        locale: kind.decode_value(get("locale")?)?,
        last_login_ms: kind.decode_value(get("lastLogin")?)?,
        admin: kind.decode_value(get("admin")?)?,
        cart: attrs
            .get("cart")
            .map(|b| kind.decode_value(b))
            .transpose()?,
        catalog: attrs
            .get("catalog")
            .map(|b| kind.decode_value(b))
            .transpose()?,
    })
}

fn sessions() -> [(&'static str, Session); 3] {
    [("small", small()), ("medium", medium()), ("large", large())]
}

fn criterion_benches(c: &mut Criterion) {
    for (size, session) in sessions() {
        let mut group = c.benchmark_group(format!("serializers/{size}"));
        for kind in SerializerKind::ALL {
            let bytes = encode(kind, &session).expect("encode");
            assert_eq!(decode(kind, &bytes).expect("decode"), session);
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_with_input(BenchmarkId::new("encode", kind), &session, |b, s| {
                b.iter(|| encode(kind, black_box(s)))
            });
            group.bench_with_input(BenchmarkId::new("decode", kind), &bytes, |b, bytes| {
                b.iter(|| decode(kind, black_box(bytes)))
            });
        }
        group.finish();
    }
}

/// Mean ns per call of `f`, over at least `budget` (after a short warm-up).
fn time_ns<R>(budget: Duration, mut f: impl FnMut() -> R) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < budget / 5 {
        black_box(f());
    }
    let mut iters = 0u64;
    let start = Instant::now();
    loop {
        for _ in 0..16 {
            black_box(f());
        }
        iters += 16;
        if start.elapsed() >= budget {
            break;
        }
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Rounds per table cell: the serializers are timed in turn within each
/// round and each cell keeps its best round, so load from other processes on
/// the machine hits all serializers alike and inflates no single cell.
const ROUNDS: u32 = 7;

fn summary_table(budget: Duration) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    println!();
    println!(
        "serializer summary (one run; best of {ROUNDS} interleaved rounds of {:?} per cell; \
         load average {load}; encode/decode = all attribute values + the attribute map)",
        budget / ROUNDS
    );
    println!(
        "{:<10} {:<7} {:>12} {:>12} {:>9} {:>11} {:>11}",
        "serializer", "session", "encode ns", "decode ns", "bytes", "enc vs json", "dec vs json"
    );
    for (size, session) in sessions() {
        let encoded: Vec<(SerializerKind, Vec<u8>)> = SerializerKind::ALL
            .into_iter()
            .map(|k| (k, encode(k, &session).expect("encode")))
            .collect();
        let mut best = vec![(f64::MAX, f64::MAX); encoded.len()];
        for _ in 0..ROUNDS {
            for ((kind, bytes), best) in encoded.iter().zip(best.iter_mut()) {
                let kind = *kind;
                let enc = time_ns(budget / ROUNDS, || encode(kind, black_box(&session)));
                let dec = time_ns(budget / ROUNDS, || decode(kind, black_box(bytes)));
                *best = (best.0.min(enc), best.1.min(dec));
            }
        }
        let json = encoded
            .iter()
            .position(|(k, _)| *k == SerializerKind::Json)
            .expect("json row");
        let (json_enc, json_dec) = best[json];
        for ((kind, bytes), (enc, dec)) in encoded.iter().zip(best) {
            println!(
                "{:<10} {:<7} {:>12.0} {:>12.0} {:>9} {:>10.2}x {:>10.2}x",
                kind.name(),
                size,
                enc,
                dec,
                bytes.len(),
                enc / json_enc,
                dec / json_dec
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
    // `cargo test --benches` runs benches in test mode: keep that quick.
    let quick = std::env::args().any(|a| a == "--test");
    summary_table(if quick {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(700)
    });
}
