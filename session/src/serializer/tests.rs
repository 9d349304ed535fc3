//! Tests shared by every serializer ([`conformance`]) and of [`SerializerKind`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    sku: String,
    qty: u32,
    price_cents: i64,
    tags: Vec<String>,
    attrs: BTreeMap<String, BTreeMap<String, u64>>,
    note: Option<String>,
}

fn item(i: u32) -> Item {
    let mut inner = BTreeMap::new();
    inner.insert("w".to_owned(), u64::from(i) * 1000);
    inner.insert("h".to_owned(), u64::MAX - u64::from(i));
    let mut attrs = BTreeMap::new();
    attrs.insert(format!("dim{i}"), inner);
    Item {
        sku: format!("sku-{i:05}"),
        qty: i,
        price_cents: -(i64::from(i) * 199),
        tags: vec![
            "ünïcødé ✓".to_owned(),
            String::new(),
            "\"quoted\\\"".to_owned(),
        ],
        attrs,
        note: (i & 1 == 0).then(|| format!("note {i}")),
    }
}

fn roundtrip<S: Serializer, T>(v: &T)
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let b = S::encode(v).unwrap();
    let back: T = S::decode(&b).unwrap_or_else(|e| panic!("{}: {e} for {v:?}", S::NAME));
    assert_eq!(&back, v, "{}", S::NAME);
}

/// Tiny deterministic PRNG (xorshift64*) so garbage tests are reproducible.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn sample_attrs<S: Serializer>() -> Attributes {
    let mut attrs = Attributes::new();
    attrs.insert("user".into(), S::encode("alice").unwrap());
    attrs.insert("visits".into(), S::encode(&42u64).unwrap());
    attrs.insert("cart".into(), S::encode(&vec![item(1), item(2)]).unwrap());
    attrs.insert("empty".into(), S::encode(&Vec::<u8>::new()).unwrap());
    attrs
}

/// Everything each serializer must do.
pub(crate) fn conformance<S: Serializer>() {
    // Values of the shapes sessions hold.
    roundtrip::<S, _>(&"hello, wörld".to_owned());
    roundtrip::<S, _>(&String::new());
    roundtrip::<S, _>(&0u8);
    roundtrip::<S, _>(&u64::MAX);
    roundtrip::<S, _>(&i64::MIN);
    roundtrip::<S, _>(&1.5f64);
    roundtrip::<S, _>(&true);
    roundtrip::<S, _>(&vec![1u32, 2, 3, 300_000]);
    roundtrip::<S, _>(&Vec::<String>::new());
    roundtrip::<S, _>(&Some(7i32));
    roundtrip::<S, _>(&None::<String>);
    roundtrip::<S, _>(&item(3));
    roundtrip::<S, _>(&(0..20).map(item).collect::<Vec<_>>());
    let mut nested: HashMap<String, BTreeMap<String, Vec<Option<u16>>>> = HashMap::new();
    nested
        .entry("a".into())
        .or_default()
        .insert("b".into(), vec![Some(1), None, Some(65535)]);
    nested.insert("empty".into(), BTreeMap::new());
    roundtrip::<S, _>(&nested);

    // The session payload.
    let attrs = sample_attrs::<S>();
    let payload = S::encode_attributes(&attrs).unwrap();
    let back = S::decode_attributes(&payload).unwrap();
    assert_eq!(back, attrs, "{}", S::NAME);
    let cart: Vec<Item> = S::decode(&back["cart"]).unwrap();
    assert_eq!(cart, vec![item(1), item(2)]);
    assert!(
        S::decode_attributes(&S::encode_attributes(&Attributes::new()).unwrap())
            .unwrap()
            .is_empty()
    );

    // Every truncation of a payload or a struct is an error.
    let one = S::encode(&item(4)).unwrap();
    for cut in 0..payload.len() {
        assert!(
            S::decode_attributes(&payload[..cut]).is_err(),
            "{} cut {cut}",
            S::NAME
        );
    }
    for cut in 0..one.len() {
        assert!(
            S::decode::<Item>(&one[..cut]).is_err(),
            "{} cut {cut}",
            S::NAME
        );
    }
    // Trailing bytes are an error.
    let mut longer = one.clone();
    longer.push(0);
    assert!(S::decode::<Item>(&longer).is_err(), "{}", S::NAME);

    // Bit flips and random bytes never panic (they may decode to something).
    let mut rng = Rng::new(0x5eed ^ u64::from(S::ID));
    for _ in 0..2000 {
        let mut b = if rng.next_u64() & 1 == 0 {
            payload.clone()
        } else {
            one.clone()
        };
        let flips = 1 + rng.next_u64() % 4;
        for _ in 0..flips {
            let i = (rng.next_u64() % b.len() as u64) as usize;
            b[i] ^= 1 << (rng.next_u64() % 8);
        }
        let _ = S::decode_attributes(&b);
        let _ = S::decode::<Item>(&b);
        let _ = S::decode::<Vec<String>>(&b);
    }
    for len in 0..300 {
        let b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let _ = S::decode_attributes(&b);
        let _ = S::decode::<Item>(&b);
        let _ = S::decode::<BTreeMap<String, Vec<u64>>>(&b);
        let _ = S::decode::<serde_json::Value>(&b);
    }
    // Plain garbage is an error.
    assert!(S::decode_attributes(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
    assert!(S::decode::<Item>(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
}

#[test]
fn names_and_ids_resolve_both_ways() {
    for k in SerializerKind::ALL {
        assert_eq!(SerializerKind::from_id(k.id()), Some(k));
        assert_eq!(SerializerKind::from_name(k.name()), Some(k));
        assert_eq!(k.name().parse::<SerializerKind>(), Ok(k));
    }
    assert_eq!(
        SerializerKind::from_name("MessagePack"),
        Some(SerializerKind::MessagePack)
    );
    assert_eq!(
        SerializerKind::from_name("msgpack"),
        Some(SerializerKind::MessagePack)
    );
    assert_eq!(SerializerKind::from_name("kryo"), None);
    assert_eq!(SerializerKind::from_id(0), None);
    assert_eq!(SerializerKind::from_id(5), None);
    assert_eq!(
        SerializerKind::try_from_id(9),
        Err(SerializerError::UnknownId(9))
    );
    // Stored ids are part of the format: they must never change.
    let ids: Vec<u8> = SerializerKind::ALL.iter().map(|k| k.id()).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(SerializerKind::Json as u8, 4);
}

#[test]
fn record_written_with_one_serializer_is_read_by_any_node() {
    // A node configured with `json` reads a copy written with each serializer
    // by following the header's id.
    for writer in SerializerKind::ALL {
        let mut attrs = Attributes::new();
        attrs.insert("user".into(), writer.encode_value("bob").unwrap());
        let rec = crate::record::SessionRecord::new_live(
            writer.id(),
            60,
            writer.encode_attributes(&attrs).unwrap(),
        );
        let rec = crate::record::SessionRecord::decode(&rec.encode()).unwrap();
        let kind = SerializerKind::from_id(rec.serializer).unwrap();
        let back = kind.decode_attributes(&rec.payload).unwrap();
        let user: String = kind.decode_value(&back["user"]).unwrap();
        assert_eq!(user, "bob");
    }
}

#[test]
fn payload_read_with_the_wrong_serializer_never_panics() {
    for writer in SerializerKind::ALL {
        let payload = writer.encode_attributes(&sample_attrs::<Json>()).ok();
        let payload = payload.unwrap_or_else(|| {
            let mut a = Attributes::new();
            a.insert("user".into(), writer.encode_value("x").unwrap());
            writer.encode_attributes(&a).unwrap()
        });
        for reader in SerializerKind::ALL {
            let _ = reader.decode_attributes(&payload);
        }
    }
}
